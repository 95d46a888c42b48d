"""The response cache as the pipeline sees it: which requests it may answer (a Plan),
lookups and stores that fail open, and the flights identical requests share.

A request is answered from the cache when its model's mode allows it (by default only
deterministic requests: temperature 0, or a seed) and `Cache-Control` does not forbid
it: `no-cache` skips the lookup and refreshes the entry, `no-store` keeps the answer
out of it. Only complete, error-free generations are stored. Any store failure (Redis
down, slow past `timeout_s`, or answering garbage) is counted and served around; after
one, the store is left alone for `retry_after_s`, so a dead Redis costs nothing.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from engines.types import GenerationRequest
from gateway import redis_client
from gateway.backoff import Backoff
from gateway.cache.entry import CorruptEntry, Entry
from gateway.cache.flights import Flight, Item, Watch
from gateway.cache.keys import Identity, cache_key, deterministic
from gateway.cache.memory import MemoryCache
from gateway.cache.redis import CacheUnavailable, RedisCache
from gateway.settings import CacheSettings

log = logging.getLogger("switchyard")

T = TypeVar("T")


class Store(Protocol):
    """Where entries live (cache/memory.py, cache/redis.py)."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl_s: float | None = None) -> None: ...

    def held(self) -> tuple[int, int] | None:
        """(entries, bytes) this process holds; None for a shared store."""

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Plan:
    key: str
    choices: int  # a complete answer finishes this many
    read: bool  # look it up (no `Cache-Control: no-cache`)
    write: bool  # store the answer (no `no-store`)


class ResponseCache:
    def __init__(self, settings: CacheSettings, store: Store | None) -> None:
        self.settings = settings
        self.oversized = 0  # answers over max_entry_bytes, not stored
        self.store = store
        self.errors: Counter[str] = Counter()  # by operation: get, set, decode
        self._flights: dict[str, Flight[Any]] = {}
        self._backoff = Backoff(settings.retry_after_s)

    @classmethod
    def from_settings(cls, settings: CacheSettings) -> ResponseCache:
        store: Store | None = None
        if settings.backend == "memory":
            store = MemoryCache(settings.max_bytes, settings.ttl_s)
        elif settings.backend == "redis":
            store = RedisCache(
                settings.redis_url,
                settings.ttl_s,
                settings.prefix,
                settings.timeout_s,
                redis_client.password(settings),
            )
        return cls(settings, store)

    def plan(
        self,
        identity: Identity,
        endpoint: str,
        requests: Sequence[GenerationRequest],
        scope: str = "",
        cache_control: str = "",
    ) -> Plan | None:
        """How the cache takes part in this request; None if not at all (bypass)."""
        mode = self.settings.modes.get(identity.base, self.settings.mode)
        if self.store is None or mode == "off":
            return None
        if mode == "deterministic" and not deterministic(requests):
            return None
        directives = {d.strip().lower() for d in cache_control.split(",")}
        read, write = "no-cache" not in directives, "no-store" not in directives
        if not (read or write):
            return None
        key = cache_key(identity, endpoint, requests, scope)
        return Plan(key, sum(r.n for r in requests), read, write)

    async def get(self, plan: Plan) -> Entry | None:
        """The stored answer, or None: missing, or the store failed (counted)."""
        if self.store is None or not self._backoff.up():
            return None
        try:
            stored = await self.store.get(plan.key)
            return None if stored is None else Entry.decode(stored, plan.key)
        except CacheUnavailable as exc:
            self._failed("get", exc)
        except CorruptEntry as exc:
            self._failed("decode", exc, skip_store=False)  # one bad entry, not a bad store
        return None

    def flight(
        self, plan: Plan, source: Callable[[Watch], AsyncGenerator[Item, None]], context: T
    ) -> tuple[Flight[T], bool]:
        """The generation in flight for `plan`'s key, joined, or a new one from
        `source(watch)`; and whether it is new. A `no-cache` request never joins: it
        wants a fresh answer."""
        flight = self._flights.get(plan.key) if plan.read else None
        if flight is not None:
            return flight, False
        flight = Flight(
            source,
            context,
            lambda landed: self._landed(plan, landed),
            lambda gone: self._forget(plan.key, gone),
        )
        self._flights.setdefault(plan.key, flight)
        return flight, True

    def flights(self) -> list[Flight[Any]]:
        """Generations in flight that identical requests may join."""
        return list(self._flights.values())

    async def aclose(self) -> None:
        for flight in list(self._flights.values()):
            flight.cancel()
        self._flights.clear()
        if self.store is not None:
            await self.store.aclose()

    async def _landed(self, plan: Plan, flight: Flight[Any]) -> None:
        try:
            if plan.write and flight.error is None and _finished(flight) == plan.choices:
                await self._set(plan.key, Entry(tuple(flight.items)).encode(plan.key))
        finally:
            self._forget(plan.key, flight)

    async def _set(self, key: str, value: bytes) -> None:
        if self.store is None or not self._backoff.up():
            return
        if len(value) > self.settings.max_entry_bytes:
            self.oversized += 1  # a bound on what one request keeps: not stored
            return
        try:
            await self.store.set(key, value)
        except CacheUnavailable as exc:
            self._failed("set", exc)

    def _forget(self, key: str, flight: Flight[Any]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    def _failed(self, operation: str, exc: Exception, skip_store: bool = True) -> None:
        self.errors[operation] += 1
        if skip_store:
            self._backoff.failed()
        log.warning("response cache %s failed, serving without it: %s", operation, exc)


def _finished(flight: Flight[Any]) -> int:
    """How many choices got their finish reason."""
    return len({(slot, chunk.index) for slot, chunk in flight.items if chunk.finish_reason})
