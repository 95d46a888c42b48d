"""The adapter ledger: where the workers of one gateway agree on its adapters.

Each worker keeps its own registry (gateway/adapters.py); the ledger holds what they
agree on. For each adapter name, its latest version (base, path, digest) or, once
unloaded, a tombstone, each stamped with a sequence number the ledger assigns (the
higher wins); and, for each worker, a heartbeat and the versions it holds (routes to,
or still has requests on). A worker

    loads through the API     publishes the version (`publish`)
    unloads through the API   publishes a tombstone, drains, then releases it
    syncs                     (each probe interval, and before restoring a backend's
                              adapters) follows every entry newer than what it has

A version (`name@digest`) leaves the engines only once no other live worker holds it
(`Sync.held_elsewhere`), so an upstream that every worker shares keeps it while any
worker still sends it requests, and no worker finds it "lost" there and loads it
again (gateway/balancer/health.py restores what an upstream lost). A worker that is
about to follow a version holds it from the sync that shows it to them, before it
loads it. A worker is live while its heartbeat is younger than `stale_after_s`: one
that died stops holding anything after that.

    FileLedger   a JSON file in the workers' run directory under an fcntl lock: the
                 workers of one `switchyard serve --workers N`, on one host
    RedisLedger  keys in Redis (`adapter_registry: {backend: redis}`): gateway
                 replicas, and their workers, on any number of hosts

Either reads the entries and writes this worker's heartbeat in one transaction. A
ledger that lost its data (a Redis restarted without persistence) starts a new
epoch: each worker then forgets what it followed and publishes what it serves again
(AdapterRegistry.follow), so the ledger is rebuilt from the gateways. A
ledger that cannot be reached raises LedgerUnavailable (a 503 for a load or unload;
a follow tries again at the next probe interval).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio.to_thread
import redis.asyncio as redis

from gateway.errors import ServiceUnavailable
from gateway.settings import Settings

T = TypeVar("T")


class LedgerUnavailable(ServiceUnavailable):
    """The ledger could not be read or written."""


def version(name: str, digest: str) -> str:
    return f"{name}@{digest}"


@dataclass(frozen=True, slots=True)
class Entry:
    """An adapter name's latest state: a version to serve, or `removed`. `seq` is
    the ledger's (0 until published)."""

    name: str
    base: str
    path: str
    digest: str
    seq: int = 0
    removed: bool = False

    @property
    def version(self) -> str:
        return version(self.name, self.digest)


@dataclass(frozen=True, slots=True)
class View:
    """What a worker has, as it tells the ledger: the versions it holds, and per name
    the last entry it followed, published or gave up on (`seen`)."""

    holding: frozenset[str]
    seen: Mapping[str, int]

    def holds(self, entries: Mapping[str, Entry]) -> list[str]:
        """The versions held, and those it is about to follow."""
        coming = {
            e.version
            for e in entries.values()
            if not e.removed and e.seq > self.seen.get(e.name, 0)
        }
        return sorted(self.holding | coming)


@dataclass(frozen=True, slots=True)
class Sync:
    entries: Mapping[str, Entry]
    held_elsewhere: frozenset[str]  # versions other live workers hold
    epoch: str  # new when the ledger starts empty (a Redis that lost its data)


class Ledger(Protocol):
    async def sync(self, view: View) -> Sync:
        """In one step: record this worker as alive and holding `view.holds(...)`,
        and read the entries and what the other live workers hold."""
        ...

    async def publish(self, entry: Entry, view: View, *, if_absent: bool = False) -> Entry:
        """Store `entry` with the next sequence number (and this worker's holdings)
        and return it; with `if_absent`, only where the name has no entry yet, else
        return the entry there."""
        ...

    async def aclose(self) -> None:
        """This worker leaves: it holds nothing from now on."""
        ...


class FileLedger:
    """The ledger in `directory`/adapters.json, changed under an exclusive fcntl lock
    on adapters.lock and replaced whole (never seen half-written). `worker` names this
    process in it."""

    def __init__(self, directory: Path, worker: str, stale_after_s: float) -> None:
        self.path = directory / "adapters.json"
        self.lock = directory / "adapters.lock"
        self.worker = worker
        self.stale_after_s = stale_after_s

    async def sync(self, view: View) -> Sync:
        def step(state: dict[str, Any]) -> Sync:
            entries = _entries(state)
            self._beat(state, view.holds(entries))
            epoch = state.setdefault("epoch", uuid.uuid4().hex)
            return Sync(entries, self._held_elsewhere(state), epoch)

        return await self._transaction(step)

    async def publish(self, entry: Entry, view: View, *, if_absent: bool = False) -> Entry:
        def step(state: dict[str, Any]) -> Entry:
            entries = _entries(state)
            stored = entries.get(entry.name)
            if stored is None or not if_absent:
                state["seq"] = int(state.get("seq", 0)) + 1
                stored = Entry(**{**asdict(entry), "seq": state["seq"]})
                state.setdefault("adapters", {})[entry.name] = asdict(stored)
                entries = {**entries, entry.name: stored}
            self._beat(state, view.holds(entries))
            return stored

        return await self._transaction(step)

    async def aclose(self) -> None:
        def step(state: dict[str, Any]) -> None:
            state.get("workers", {}).pop(self.worker, None)

        await self._transaction(step)

    def _beat(self, state: dict[str, Any], holds: list[str]) -> None:
        state.setdefault("workers", {})[self.worker] = {"seen": time.time(), "holds": holds}

    def _held_elsewhere(self, state: dict[str, Any]) -> frozenset[str]:
        oldest = time.time() - self.stale_after_s
        held: set[str] = set()
        for worker, beat in state.get("workers", {}).items():
            if worker != self.worker and beat["seen"] >= oldest:
                held.update(beat["holds"])
        return frozenset(held)

    async def _transaction(self, step: Callable[[dict[str, Any]], T]) -> T:
        return await anyio.to_thread.run_sync(self._locked, step)

    def _locked(self, step: Callable[[dict[str, Any]], T]) -> T:
        with self.lock.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state: dict[str, Any] = {}
                with contextlib.suppress(FileNotFoundError):
                    state = json.loads(self.path.read_text())
                result = step(state)
                incoming = self.path.with_name(f".{self.path.name}.{os.getpid()}")
                incoming.write_text(json.dumps(state))
                incoming.replace(self.path)
                return result
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _entries(state: dict[str, Any]) -> dict[str, Entry]:
    return {name: Entry(**fields) for name, fields in state.get("adapters", {}).items()}


# Take a worker out of the set only if its beat is still gone (it may just have beaten).
_FORGET = """
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[1]) end
"""


class RedisLedger:
    """The ledger in Redis under `prefix`: `entries` (a hash, name -> entry as JSON),
    `seq` (the last sequence number given), `epoch` (set when the ledger is found
    empty), `workers` (a set of worker names) and `worker:NAME` (what it holds, as
    JSON) that expires `stale_after_s` after its last beat: liveness is Redis's
    clock, never the hosts'. Each step watches `entries`, `seq` and `epoch` and is
    retried when another worker changed them meanwhile (WATCH/MULTI), so what a
    worker says it holds always matches the entries it read.
    Each step is bounded by `timeout_s`; past it, or on any Redis error,
    LedgerUnavailable."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        worker: str,
        stale_after_s: float,
        timeout_s: float,
    ) -> None:
        self._client = client
        self._entries = prefix + "entries"
        self._seq = prefix + "seq"
        self._workers = prefix + "workers"
        self._epoch = prefix + "epoch"
        self._prefix = prefix
        self.worker = worker
        self._ttl_ms = int(stale_after_s * 1000)
        self._timeout_s = timeout_s
        self._forget = client.register_script(_FORGET)

    async def sync(self, view: View) -> Sync:
        async with self._reaching("read"):
            entries, _, epoch = await self._transaction(view)
            return Sync(entries, await self._held_elsewhere(), epoch)

    async def publish(self, entry: Entry, view: View, *, if_absent: bool = False) -> Entry:
        async with self._reaching("write"):
            _, stored, _ = await self._transaction(view, entry, if_absent)
            assert stored is not None
            return stored

    async def aclose(self) -> None:
        try:
            async with self._reaching("leave"):
                await self._client.delete(self._worker_key(self.worker))
                await self._client.srem(self._workers, self.worker)
        finally:
            await self._client.aclose()

    def _worker_key(self, worker: str) -> str:
        return f"{self._prefix}worker:{worker}"

    async def _transaction(
        self, view: View, entry: Entry | None = None, if_absent: bool = False
    ) -> tuple[dict[str, Entry], Entry | None, str]:
        """Read the entries and the epoch; store `entry` (as `publish` does), if any,
        this worker's beat and, in an empty ledger, a new epoch, unless another worker
        wrote meanwhile: then again."""
        async with self._client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(self._entries, self._seq, self._epoch)
                    stamped = await pipe.get(self._epoch)
                    epoch = _text(stamped) if stamped else uuid.uuid4().hex
                    raw = await pipe.hgetall(self._entries)
                    entries = {
                        _text(name): Entry(**json.loads(fields)) for name, fields in raw.items()
                    }
                    stored = entries.get(entry.name) if entry is not None else None
                    writes = entry is not None and (stored is None or not if_absent)
                    seq = int(await pipe.get(self._seq) or 0) + 1 if writes else 0
                    pipe.multi()  # type: ignore[no-untyped-call]
                    if not stamped:
                        pipe.set(self._epoch, epoch)
                    if writes:
                        assert entry is not None
                        stored = Entry(**{**asdict(entry), "seq": seq})
                        entries = {**entries, entry.name: stored}
                        pipe.set(self._seq, seq)
                        pipe.hset(self._entries, entry.name, json.dumps(asdict(stored)))
                    beat = json.dumps(view.holds(entries))
                    pipe.set(self._worker_key(self.worker), beat, px=self._ttl_ms)
                    pipe.sadd(self._workers, self.worker)
                    await pipe.execute()
                    return entries, stored, epoch
                except redis.WatchError:
                    continue

    async def _held_elsewhere(self) -> frozenset[str]:
        """What the other live workers hold; a worker whose beat expired leaves the set."""
        others = [_text(w) for w in await self._client.smembers(self._workers)]
        others = [w for w in others if w != self.worker]
        if not others:
            return frozenset()
        beats = await self._client.mget([self._worker_key(w) for w in others])
        held: set[str] = set()
        gone = []
        for worker, beat in zip(others, beats, strict=True):
            if beat is None:
                gone.append(worker)
            else:
                held.update(json.loads(beat))
        for worker in gone:  # unless it beat again meanwhile
            await self._forget(keys=[self._worker_key(worker), self._workers], args=[worker])
        return frozenset(held)

    @contextlib.asynccontextmanager
    async def _reaching(self, what: str) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._timeout_s):
                yield
        except (redis.RedisError, OSError, TimeoutError) as exc:
            raise LedgerUnavailable(
                f"The adapter registry in Redis could not {what}: {type(exc).__name__}: {exc}. "
                "Check that Redis is up (adapter_registry.redis_url), then retry."
            ) from None


def open_ledger(settings: Settings, run: Path | None = None) -> Ledger | None:
    """The ledger `settings.adapter_registry` names, for this process: Redis's; with
    `local`, the run directory's file when there is one (workers), else none (one
    process agrees with itself)."""
    registry = settings.adapter_registry
    probe_s = settings.balancer.probe_interval_s
    # A worker that stopped beating for this long holds no adapter version any more.
    stale_after_s = registry.stale_after_s or max(10.0, 3 * probe_s)
    if registry.backend == "redis":
        from gateway import redis_client

        client = redis_client.connect_section(registry)
        worker = f"{socket.gethostname()}:{os.getpid()}"
        return RedisLedger(client, registry.prefix, worker, stale_after_s, registry.timeout_s)
    if run is not None:
        return FileLedger(run, str(os.getpid()), stale_after_s)
    return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
