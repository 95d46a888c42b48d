"""The Redis rate limiter against a real redis-server: a token debt outlives the
key's idle minutes, and charges Redis missed are not forgiven."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from gateway.auth.keys import Principal
from gateway.auth.limits import RedisLimiter
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
