"""The shared cache backend: Redis (`redis.asyncio`), for gateway replicas that
should share hits. Values are zlib-compressed; keys carry a prefix and the key
format version (gateway/cache/keys.py). Every call is bounded by `timeout_s`, and any
failure — Redis down, slow, or answering garbage — raises CacheUnavailable, which the
caller counts and serves around (the cache fails open)."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable

import redis.asyncio as redis

from gateway import redis_client


class CacheUnavailable(Exception):
    pass


class RedisCache:
    def __init__(
        self,
        url: str,
        ttl_s: float,
        prefix: str = "switchyard:",
        timeout_s: float = 0.05,
        password: str | None = None,
    ) -> None:
        self.ttl_s = ttl_s
        self.prefix = prefix
        self.timeout_s = timeout_s
        self._client = redis_client.connect(url, timeout_s, password)

    async def get(self, key: str) -> bytes | None:
        try:
            async with asyncio.timeout(self.timeout_s):
                stored = await self._client.get(self.prefix + key)
        except (redis.RedisError, TimeoutError, OSError) as exc:
            raise CacheUnavailable(f"redis get failed: {type(exc).__name__}: {exc}") from None
        if stored is None:
            return None
        if not isinstance(stored, bytes):
            raise CacheUnavailable("redis returned a value that is not a cache entry")
        try:
            return await _off_loop(zlib.decompress, stored)
        except zlib.error:
            raise CacheUnavailable("redis returned a value that is not a cache entry") from None

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        ttl_ms = int((ttl_s or self.ttl_s) * 1000)
        try:
            async with asyncio.timeout(self.timeout_s):
                packed = await _off_loop(zlib.compress, value)
                await self._client.set(self.prefix + key, packed, px=ttl_ms)
        except (redis.RedisError, TimeoutError, OSError) as exc:
            raise CacheUnavailable(f"redis set failed: {type(exc).__name__}: {exc}") from None

    def held(self) -> None:
        return None  # shared: this process does not count what Redis holds

    async def aclose(self) -> None:
        await self._client.aclose()


OFF_LOOP_BYTES = 64 * 1024  # (de)compressing more than this runs in a worker thread


async def _off_loop(work: Callable[[bytes], bytes], data: bytes) -> bytes:
    """`work(data)`, off the event loop when `data` is large enough to stall it."""
    if len(data) < OFF_LOOP_BYTES:
        return work(data)
    return await asyncio.to_thread(work, data)
