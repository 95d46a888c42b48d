"""The rate limiters, the Redis one against a real redis-server: a token debt
outlives the key's idle minutes, charges Redis missed are not forgiven, and a
request's worst case is reserved at admission and settled when it ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from gateway.auth.keys import Principal
from gateway.auth.limits import Limiter, MemoryLimiter, RedisLimiter
from gateway.settings import RateLimitSettings
from tests.redis_server import RedisServer


@pytest.fixture
async def limiter(redis_server: RedisServer) -> AsyncIterator[RedisLimiter]:
    settings = RateLimitSettings(backend="redis", redis_url=redis_server.url, retry_after_s=0.5)
    limiter = RedisLimiter(settings)
    yield limiter
    await limiter.aclose()


async def test_a_debt_lasts_until_it_is_refilled(
    limiter: RedisLimiter, redis_server: RedisServer
) -> None:
    """60 tokens a minute, 260 charged: the bucket is full again in 260 s, so its key
    must live that long (it used to expire 120 s after the charge, debt and all)."""
    debtor = Principal("debtor", rpm=2, tpm=60)
    assert (await limiter.admit(debtor)).allowed
    await limiter.charge(debtor, 260)
    refused = await limiter.admit(debtor)
    assert not refused.allowed
    assert refused.limit == "tokens"
    assert refused.retry_after_s > 120
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert await client.pttl("switchyard:rl:debtor:tokens") >= 260_000
        assert 30_000 <= await client.pttl("switchyard:rl:debtor:requests") <= 32_000
    finally:
        await client.aclose()


async def test_charges_redis_missed_are_charged_later(
    limiter: RedisLimiter, redis_server: RedisServer
) -> None:
    key = Principal("k", tpm=6000)
    redis_server.pause()  # stalled: a call waits out timeout_s
    try:
        await limiter.charge(key, 500)
        await limiter.charge(key, 500)  # within retry_after_s: Redis is not even asked
        skipped = await limiter.admit(key)
        assert skipped.unavailable
        assert skipped.allowed  # on_redis_error: allow
        assert limiter.errors == 1
        assert limiter.deferred_tokens == 1000
    finally:
        redis_server.resume()
    await asyncio.sleep(0.5)
    await limiter.charge(key, 1)
    assert limiter.deferred_tokens == 0
    left = (await limiter.admit(key)).tokens_left
    assert left is not None
    assert 6000 - 1001 <= left < 6000 - 1000 + 10


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_a_reservation_is_taken_at_admission_and_settled_at_the_end(
    store: str, request: pytest.FixtureRequest
) -> None:
    if store == "memory":
        either: Limiter = MemoryLimiter()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        either = RedisLimiter(RateLimitSettings(backend="redis", redis_url=server.url))
    key = Principal("r", tpm=1000)
    first = await either.admit(key, 600)
    assert first.allowed
    assert first.reserved == 600
    assert first.tokens_left == pytest.approx(400, abs=2)
    second = await either.admit(key, 600)  # not in debt yet: admitted, into debt
    assert second.allowed
    refused = await either.admit(key, 1)
    assert not refused.allowed
    assert refused.reserved == 0  # nothing taken
    for _ in range(2):
        await either.charge(key, 50 - 600)  # each used 50: the rest back
    left = (await either.admit(key)).tokens_left
    assert left == pytest.approx(900, abs=2)
    await either.charge(key, -5000)  # a refund never fills the bucket past its size
    assert (await either.admit(key)).tokens_left == pytest.approx(1000, abs=2)
    await either.aclose()
