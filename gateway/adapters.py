"""The gateway's adapter registry: LoRA adapters addressed as model names.

The registry, not the engine, owns an adapter's identity (name + sha256 of its files),
its vLLM lora id (fresh for every new digest, so a changed adapter never reuses cached
state), its state and its in-flight count:

    validate (before any engine is touched) → load on every healthy backend of the
    base's pool (all or nothing: one refusal rolls the others back) → listed, ready
    ready → draining (new requests: 404; in-flight ones finish) → unloaded everywhere

Runtime loads are copied first into a content-addressed directory under the adapter
root (`.switchyard-store/<sha256>`), hashing what is copied; the copy is what is
validated and what the engines load, so nothing can change between validation and
load (the checks and the copy: gateway/adapter_files.py). Only safetensors weights are
taken (a pickle can run code when loaded), and names are plain (`NAME`). The digest
is checked again before an adapter is restored onto a backend that restarted. A copy
no adapter uses any more (unloaded, or replaced by a new version, and drained) is
deleted; copying and deleting happen under the registry's lock, so a load never picks
a copy that is being deleted.

A backend that was down gets the registry's adapters when it recovers (`restore`),
and so does one that restarted empty between two probes (gateway/balancer/health.py),
so a replica that restarted serves them again. Reloading a name with different
files makes the new version ready at once; the old one drains in the background and
is then unloaded.

Workers of one gateway (gateway/workers/), and gateway replicas sharing a Redis
(`adapter_registry: {backend: redis}`), each keep a registry and agree through a
ledger (gateway/adapter_ledger.py, `share`): what one loads or unloads through the
API is published there, the others `follow` it within a probe interval (and before
they restore a backend's adapters, so none puts back what another unloaded), and a
version leaves the engines only once no worker holds it: an unload answers once every
worker stopped routing to it and finished its requests on it. A load or unload the
ledger cannot record is a 503 and changes nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread

from engines.errors import EngineUnavailable
from engines.types import Adapter
from gateway.adapter_files import (
    STORE,
    AdapterRejected,
    Artifact,
    content_digest,
    inspect,
    stored,
)
from gateway.adapter_ledger import Entry, Ledger, LedgerUnavailable, Sync, View, version
from gateway.balancer.backend import Backend
from gateway.balancer.pool import Pool
from gateway.errors import NotFound, ServiceUnavailable

log = logging.getLogger("switchyard")

State = Literal["ready", "draining"]
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RELEASE_POLL_S = 0.1  # how often a drained version asks whether other workers hold it
LEDGER_RETRY_S = 1.0  # and how often while the ledger cannot be reached


class _Superseded(Exception):
    """A ledger entry being followed was overtaken by a newer one meanwhile."""


@dataclass(slots=True, eq=False)  # one per load: compared by identity
class AdapterRecord:
    adapter: Adapter
    base: str
    pool: Pool
    placed: set[str] = field(default_factory=set)  # backend names holding it
    state: State = "ready"
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    seq: int = 0  # the ledger entry it is (0: none, or no ledger)

    def acquire(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.adapter.name,
            "base": self.base,
            "path": self.adapter.path,
            "digest": self.adapter.digest,
            "state": self.state,
            "in_flight": self.in_flight,
            "lora_id": self.adapter.engine_id,
            "backends": sorted(self.placed),
        }


@dataclass(frozen=True, slots=True)
class AdapterHost:
    """A base model that takes adapters: its pool, the names an adapter may give
    as its base, the directory runtime loads must come from, and the id of the
    artifact it serves (from its manifest, if built here)."""

    pool: Pool
    identities: frozenset[str]
    root: Path | None
    artifact: Artifact | None = None


class AdapterRegistry:
    def __init__(self) -> None:
        self._records: dict[str, AdapterRecord] = {}
        self._draining: set[asyncio.Task[None]] = set()
        self._leaving: set[AdapterRecord] = set()  # draining: their files still in use
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self.loads = self.unloads = 0  # versions, for metrics
        self._ledger: Ledger | None = None
        self._hosts: Callable[[str], AdapterHost] | None = None
        self._seen: dict[str, int] = {}  # per name: the ledger entry followed last
        self._epoch: str | None = None  # the ledger's, when last followed

    def share(self, ledger: Ledger, hosts: Callable[[str], AdapterHost]) -> None:
        """Agree with the other workers through `ledger`: loads and unloads are
        published there and theirs followed (`follow`); `hosts` finds a base model's
        AdapterHost by its id (Catalog.host)."""
        self._ledger = ledger
        self._hosts = hosts

    def get(self, name: str) -> AdapterRecord | None:
        record = self._records.get(name)
        return record if record is not None and record.state == "ready" else None

    def records(self) -> Iterable[AdapterRecord]:
        return list(self._records.values())

    async def load(
        self,
        name: str,
        path: Path,
        base_id: str,
        host: AdapterHost,
        *,
        enforce_root: bool = True,
        require_placed: bool = True,
    ) -> AdapterRecord:
        """Validate, then load. A bad adapter raises AdapterRejected and changes nothing.
        With `require_placed`, no healthy backend to load it on is a 503; without
        (start-up), the adapter waits for a backend to recover, and with a ledger it
        is published only where the ledger has nothing under its name yet (a worker
        started late follows what the others did since)."""
        return await self._load(name, path, base_id, host, enforce_root, require_placed)

    async def _load(
        self,
        name: str,
        path: Path,
        base_id: str,
        host: AdapterHost,
        enforce_root: bool,
        require_placed: bool,
        followed: Entry | None = None,
    ) -> AdapterRecord:
        """`load`; of a `followed` ledger entry: not published again."""
        support = host.pool.support
        if support is None:
            raise AdapterRejected(
                f"The model '{base_id}' is served without LoRA support; enable it with "
                "`enable_lora: true` in its engine options.",
                param="base",
            )
        if not NAME.fullmatch(name) or name == base_id:
            raise AdapterRejected(
                f"'{name}' cannot name an adapter: use letters, digits, '.', '_' and '-' "
                "(64 at most, starting with a letter or digit).",
                param="name",
            )
        root = host.root if enforce_root else None
        async with self._lock:
            if followed is not None and followed.seq <= self._seen.get(name, 0):
                raise _Superseded
            copy = path if root is None else await anyio.to_thread.run_sync(stored, path, root)
            try:
                real_path, digest = await anyio.to_thread.run_sync(
                    inspect, copy, root, support, host.identities
                )
            except AdapterRejected as exc:
                if copy != path:
                    await self._prune(str(copy))  # a rejected copy is not kept
                raise AdapterRejected(
                    exc.message.replace(str(copy), str(path)), param=exc.param
                ) from None
            current = self._records.get(name)
            if current is not None and current.base != base_id:
                raise AdapterRejected(
                    f"An adapter named '{name}' already serves '{current.base}'.", param="name"
                )
            if current is not None and current.state == "draining":
                raise AdapterRejected(f"'{name}' is being unloaded; retry once it is gone.")
            if current is not None and current.adapter.digest == digest:
                if followed is not None:
                    current.seq = self._seen[name] = followed.seq
                return current
            adapter = Adapter(name, str(real_path), digest, next(self._ids))
            placed = await _place(adapter, host.pool)
            if not placed and require_placed:
                raise ServiceUnavailable(
                    f"No backend of '{base_id}' is up to load '{name}'; retry once GET /ready "
                    "shows it ready."
                )
            record = AdapterRecord(adapter, base_id, host.pool, placed)
            self._records[name] = record
            if followed is not None:
                record.seq = self._seen[name] = followed.seq
            elif self._ledger is not None:
                try:
                    await self._publish(record, if_absent=not require_placed)
                except BaseException:  # not shared: not loaded (the ledger is down)
                    self._records.pop(name)
                    if current is not None:
                        self._records[name] = current
                    await _remove(adapter, host.pool, placed)
                    raise
            self.loads += 1
        if current is not None:
            self._retire(current)
        log.info(
            "adapter %s ready on %s (digest %s) on %s",
            name,
            base_id,
            digest[:12],
            ", ".join(sorted(placed)) or "no backend yet",
        )
        return record

    async def restore(self, pool: Pool, backend: Backend) -> None:
        """Load every listed adapter of `pool` on `backend` (which may have restarted
        empty), after following the ledger (an adapter another worker unloaded is
        not put back; with the ledger unreachable, what this worker knows is put
        back). Raises EngineUnavailable if the backend fails while at it."""
        try:
            await self.follow()
        except LedgerUnavailable as exc:
            log.warning("restoring %s's adapters without the ledger: %s", backend.name, exc)
        async with self._lock:
            for record in list(self._records.values()):
                if record.pool is not pool or record.state != "ready":
                    continue
                adapter = record.adapter
                now = await anyio.to_thread.run_sync(content_digest, Path(adapter.path))
                if now != adapter.digest:
                    log.error(
                        "adapter %s not restored on %s: its files at %s changed since it was "
                        "loaded (sha256 %s, was %s); load it again",
                        adapter.name,
                        backend.name,
                        adapter.path,
                        now[:12],
                        adapter.digest[:12],
                    )
                    continue
                await backend.engine.load_adapter(adapter)
                record.placed.add(backend.name)

    async def unload(self, name: str) -> None:
        """Stop routing to `name` now; return once its in-flight requests finished.
        Meanwhile it is listed as draining."""
        record = self.get(name)
        if record is None:
            raise NotFound(f"No adapter named '{name}' is loaded.", param="name")
        if self._ledger is not None:
            record.state = "draining"  # no new requests from now on
            adapter = record.adapter
            gone = Entry(name, record.base, adapter.path, adapter.digest, removed=True)
            try:
                published = await self._ledger.publish(gone, self._view())
            except BaseException:
                record.state = "ready"
                raise
            record.seq = self._seen[name] = published.seq
        await self._drain(record)

    async def follow(self) -> None:
        """Apply the ledger's entries newer than this worker's: load a version
        another worker loaded, replace one it replaced, drain one it unloaded. One
        that cannot be loaded here is logged and not tried again."""
        if self._ledger is None or self._hosts is None:
            return
        sync = await self._ledger.sync(self._view())
        if sync.epoch != self._epoch:
            if self._epoch is not None:
                sync = await self._republish(sync)
            self._epoch = sync.epoch
        for entry in sync.entries.values():
            current = self._records.get(entry.name)
            if entry.seq <= self._seen.get(entry.name, 0):
                continue
            if current is not None and current.state == "draining":
                continue  # followed once it is gone
            if entry.removed:
                self._seen[entry.name] = entry.seq
                if current is not None:
                    current.state = "draining"  # no new requests from now on
                    self._retire(current)
                continue
            try:
                host = self._hosts(entry.base)
                path = Path(entry.path)
                await self._load(entry.name, path, entry.base, host, False, False, entry)
            except _Superseded:
                continue
            except Exception as exc:
                self._seen[entry.name] = entry.seq
                log.error("adapter %s (from another worker) not loaded: %s", entry.name, exc)

    async def _republish(self, sync: Sync) -> Sync:
        """The ledger lost its data: forget what was followed, publish what this
        worker serves where the ledger has nothing under its name yet (another worker
        may have been first), and read it again."""
        assert self._ledger is not None
        log.warning("the adapter ledger was emptied (epoch %s): publishing ours again", sync.epoch)
        self._seen.clear()
        for record in list(self._records.values()):
            if record.state == "ready":
                await self._publish(record, if_absent=True)
        return await self._ledger.sync(self._view())

    async def _publish(self, record: AdapterRecord, *, if_absent: bool) -> None:
        """Publish `record`'s version; it is what this worker followed last under its
        name unless, with `if_absent`, the ledger already had another entry there."""
        assert self._ledger is not None
        adapter = record.adapter
        entry = Entry(adapter.name, record.base, adapter.path, adapter.digest)
        published = await self._ledger.publish(entry, self._view(), if_absent=if_absent)
        if published == dataclasses.replace(entry, seq=published.seq):
            record.seq = self._seen[adapter.name] = published.seq

    def _view(self) -> View:
        """What this worker holds: the versions it routes to or has requests on."""
        held = {
            version(r.adapter.name, r.adapter.digest)
            for r in itertools.chain(self._records.values(), self._leaving)
            if r.state == "ready" or r.in_flight
        }
        return View(frozenset(held), dict(self._seen))

    async def _released(self, record: AdapterRecord) -> bool:
        """Wait until no other live worker holds `record`'s version; whether to take it
        off the engines (not if it was loaded again meanwhile: it stays there)."""
        assert self._ledger is not None
        adapter = record.adapter
        mine = version(adapter.name, adapter.digest)
        while True:
            try:
                sync = await self._ledger.sync(self._view())
            except LedgerUnavailable as exc:
                log.warning("adapter %s waits for the ledger to unload it: %s", mine, exc)
                await asyncio.sleep(LEDGER_RETRY_S)
                continue
            again = sync.entries.get(adapter.name)
            if again and again.seq > record.seq and again.version == mine and not again.removed:
                return False
            if mine not in sync.held_elsewhere:
                return True
            await asyncio.sleep(RELEASE_POLL_S)

    def _retire(self, record: AdapterRecord) -> None:
        task = asyncio.get_running_loop().create_task(self._drain(record))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def _drain(self, record: AdapterRecord) -> None:
        record.state = "draining"
        self._leaving.add(record)
        try:
            while record.in_flight:
                await record.idle.wait()
            if self._ledger is None or await self._released(record):
                await _remove(record.adapter, record.pool, record.placed)
        finally:
            self._leaving.discard(record)
        async with self._lock:
            if self._records.get(record.adapter.name) is record:
                del self._records[record.adapter.name]
            await self._prune(record.adapter.path)
        self.unloads += 1
        log.info("adapter %s (lora id %d) unloaded", record.adapter.name, record.adapter.engine_id)

    async def _prune(self, path: str) -> None:
        """Delete the store's copy at `path` once no adapter, ready or draining, uses
        it, here or (with a ledger) in another worker: the copy is named by its
        digest. A path outside the store is the operator's, and left alone."""
        if Path(path).parent.name != STORE:
            return
        users = itertools.chain(self._records.values(), self._leaving)
        if any(r.adapter.path == path for r in users):
            return
        if self._ledger is not None:
            digest = Path(path).name
            try:
                sync = await self._ledger.sync(self._view())
            except LedgerUnavailable:
                return  # another worker may use it: kept, as an unused copy would be
            listed = any(e.digest == digest and not e.removed for e in sync.entries.values())
            if listed or any(v.endswith("@" + digest) for v in sync.held_elsewhere):
                return
        shutil.rmtree(path, ignore_errors=True)

    async def aclose(self) -> None:
        for task in list(self._draining):
            task.cancel()


async def _place(adapter: Adapter, pool: Pool) -> set[str]:
    """Load `adapter` on every healthy backend of `pool`; a down one is skipped (it
    gets the adapter when it recovers), a refusal unloads it from the others."""
    placed: set[str] = set()
    try:
        for backend in pool.backends:
            if backend.state != "ready" or not backend.healthy:
                continue
            try:
                await backend.engine.load_adapter(adapter)
            except EngineUnavailable as exc:
                log.warning("adapter %s not on %s yet: %s", adapter.name, backend.name, exc)
                continue
            placed.add(backend.name)
    except BaseException:
        await _remove(adapter, pool, placed)
        raise
    return placed


async def _remove(adapter: Adapter, pool: Pool, placed: set[str]) -> None:
    for backend in pool.backends:
        if backend.name in placed:
            try:
                await backend.engine.unload_adapter(adapter)
            except EngineUnavailable as exc:
                log.warning("adapter %s left on %s: %s", adapter.name, backend.name, exc)
