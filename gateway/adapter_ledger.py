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

Another store (Redis, for gateway replicas on several hosts) implements `Ledger`: a
transaction that reads the entries and writes this worker's heartbeat in one step.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio.to_thread

T = TypeVar("T")


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
            return Sync(entries, self._held_elsewhere(state))

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
