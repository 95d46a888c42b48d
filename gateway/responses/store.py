"""The response store: stored Responses API answers, by response id, for a TTL.

One record per response holds everything a later request needs, so it is written
and read in one step (nothing half-written, one round trip): the response object, the
request's input items, the whole conversation so far as items (a follow-up with
`previous_response_id` rebuilds its prompt from it on any replica), and the API key
label that made it (another key is answered 404).

    memory   this process only; bounded by `max_bytes` (oldest first out)
    redis    shared by gateway replicas; each record expires after `ttl_s`

A record over `max_record_bytes` is not stored (its response says `store: false`).
Every Redis call is bounded by `timeout_s`; any failure raises StoreUnavailable,
which the routes answer with a 503 where stored state is needed.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import orjson
import redis.asyncio as redis

from gateway import redis_client
from gateway.backoff import Backoff
from gateway.settings import ResponseStoreSettings


class StoreUnavailable(Exception):
    pass


class RecordTooLarge(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Stored:
    owner: str  # the API key's label ("" without auth)
    response: dict[str, Any]
    input: list[dict[str, Any]]
    history: list[dict[str, Any]]

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, data: bytes) -> Stored:
        try:
            fields = orjson.loads(data)
            return cls(fields["owner"], fields["response"], fields["input"], fields["history"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise StoreUnavailable("the store returned a value that is not a response") from None


class ResponseStore(Protocol):
    async def put(self, response_id: str, record: Stored) -> None: ...

    async def get(self, response_id: str) -> Stored | None: ...

    async def delete(self, response_id: str) -> bool: ...

    async def aclose(self) -> None: ...


def build_store(settings: ResponseStoreSettings) -> ResponseStore | None:
    if settings.backend == "memory":
        return MemoryStore(settings.ttl_s, settings.max_bytes, settings.max_record_bytes)
    if settings.backend == "redis":
        return RedisStore(settings)
    return None


class MemoryStore:
    def __init__(self, ttl_s: float, max_bytes: int, max_record_bytes: int) -> None:
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.max_record_bytes = max_record_bytes
        self.size = 0
        self._records: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def put(self, response_id: str, record: Stored) -> None:
        data = record.encode()
        if len(data) > min(self.max_record_bytes, self.max_bytes):
            raise RecordTooLarge(f"{len(data)} bytes")
        self._drop(response_id)
        self._records[response_id] = (time.monotonic() + self.ttl_s, data)
        self.size += len(data)
        while self.size > self.max_bytes:
            self._drop(next(iter(self._records)))

    async def get(self, response_id: str) -> Stored | None:
        found = self._records.get(response_id)
        if found is None:
            return None
        expires, data = found
        if expires < time.monotonic():
            self._drop(response_id)
            return None
        return Stored.decode(data)

    async def delete(self, response_id: str) -> bool:
        return self._drop(response_id)

    def _drop(self, response_id: str) -> bool:
        found = self._records.pop(response_id, None)
        if found is not None:
            self.size -= len(found[1])
        return found is not None

    async def aclose(self) -> None:
        self._records.clear()
        self.size = 0


class RedisStore:
    def __init__(self, settings: ResponseStoreSettings) -> None:
        self.ttl_ms = int(settings.ttl_s * 1000)
        self.prefix = settings.prefix
        self.timeout_s = settings.timeout_s
        self.max_record_bytes = settings.max_record_bytes
        self._backoff = Backoff(settings.retry_after_s)
        self._client = redis_client.connect_section(settings)

    async def put(self, response_id: str, record: Stored) -> None:
        data = zlib.compress(record.encode())
        if len(data) > self.max_record_bytes:
            raise RecordTooLarge(f"{len(data)} bytes compressed")
        await self._call("set", self.prefix + response_id, data, px=self.ttl_ms)

    async def get(self, response_id: str) -> Stored | None:
        data = await self._call("get", self.prefix + response_id)
        if data is None:
            return None
        try:
            return Stored.decode(zlib.decompress(data))
        except (zlib.error, TypeError):
            raise StoreUnavailable("the store returned a value that is not a response") from None

    async def delete(self, response_id: str) -> bool:
        return bool(await self._call("delete", self.prefix + response_id))

    async def _call(self, op: str, *args: Any, **kwargs: Any) -> Any:
        if not self._backoff.up():
            raise StoreUnavailable(f"redis {op} not tried: it failed within retry_after_s")
        try:
            async with asyncio.timeout(self.timeout_s):
                return await getattr(self._client, op)(*args, **kwargs)
        except (redis.RedisError, TimeoutError, OSError) as exc:
            self._backoff.failed()
            raise StoreUnavailable(f"redis {op} failed: {type(exc).__name__}: {exc}") from None

    async def aclose(self) -> None:
        await self._client.aclose()
