"""The Redis backend against a real redis-server: round trip, TTL, compression,
bounded failure when Redis dies or returns garbage, recovery when it is back."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as redis

from gateway.cache.redis import CacheUnavailable, RedisCache
from tests.redis_server import RedisServer


async def test_round_trip_ttl_and_compression(redis_server: RedisServer) -> None:
    cache = RedisCache(redis_server.url, ttl_s=0.3, timeout_s=0.5)
    value = b"chunk " * 1000
    await cache.set("k", value)
    assert await cache.get("k") == value
    assert await cache.get("other") is None
    raw = redis.Redis.from_url(redis_server.url)
    stored = await raw.get("switchyard:k")
    assert stored is not None
    assert len(stored) < len(value) / 10  # compressed
    await asyncio.sleep(0.5)
    assert await cache.get("k") is None  # expired
    await raw.set("switchyard:bad", b"not zlib")
    with pytest.raises(CacheUnavailable, match="not a cache entry"):
        await cache.get("bad")
    await raw.aclose()
    await cache.aclose()


async def test_redis_down_fails_fast_and_recovers(redis_server: RedisServer) -> None:
    """A dead Redis refuses the connection: each call fails on that refusal, at once,
    rather than waiting out its timeout; a fresh Redis on the same port is used again."""
    cache = RedisCache(redis_server.url, ttl_s=10, timeout_s=30)
    await cache.set("k", b"v")
    redis_server.stop()
    with pytest.raises(CacheUnavailable, match="ConnectionError"):
        await asyncio.wait_for(cache.get("k"), timeout=20)  # a guard, far under timeout_s
    with pytest.raises(CacheUnavailable, match="ConnectionError"):
        await asyncio.wait_for(cache.set("k", b"v"), timeout=20)
    redis_server.start()  # same port, empty (no persistence)
    assert await cache.get("k") is None
    await cache.set("k", b"v2")
    assert await cache.get("k") == b"v2"
    await cache.aclose()


async def test_a_stalled_redis_costs_one_timeout(redis_server: RedisServer) -> None:
    """A Redis that accepts but never answers (SIGSTOP): each call ends with the
    timeout's error while Redis is still stalled, and answers again once it is not."""
    cache = RedisCache(redis_server.url, ttl_s=10, timeout_s=0.2)
    await cache.set("k", b"v")
    redis_server.pause()
    try:
        with pytest.raises(CacheUnavailable, match="TimeoutError"):
            await asyncio.wait_for(cache.get("k"), timeout=20)  # a guard against hanging
        with pytest.raises(CacheUnavailable, match="TimeoutError"):
            await asyncio.wait_for(cache.set("k", b"v"), timeout=20)
    finally:
        redis_server.resume()
    assert await cache.get("k") == b"v"
    await cache.aclose()
