"""The embedded cache backend: an LRU bounded by bytes, with a TTL per entry."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class MemoryCache:
    def __init__(
        self, max_bytes: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.size = 0
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if self._clock() >= expires:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        if len(value) > self.max_bytes:
            return  # would evict everything and still not fit
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self._clock() + (ttl_s or self.ttl_s), value)
        self.size += len(value)
        while self.size > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def __len__(self) -> int:
        return len(self._entries)

    def held(self) -> tuple[int, int]:
        return len(self._entries), self.size

    async def aclose(self) -> None:
        self._entries.clear()
        self.size = 0

    def _drop(self, key: str) -> None:
        _, value = self._entries.pop(key)
        self.size -= len(value)
