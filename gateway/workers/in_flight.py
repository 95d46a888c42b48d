"""Per-key requests in flight, counted across the workers of one host.

`InFlight` (gateway/auth/limits.py) bounds a key's requests in flight in one
process; with N workers each would allow the key its `max_concurrent`, N times
over. `SharedInFlight` keeps the counts in a table that every worker maps from the
run directory: one record per key label (its blake2b digest, found by open
addressing), with one count per worker column. Entering adds to this worker's
column if the record's columns sum to less than the key's bound, all under an
exclusive fcntl lock on the table: a check and its increment are one step, as in
one process. Only keys with a bound are counted.

A worker's column is its own by an fcntl lock on `slots/COLUMN` held for the life of
the process, which the kernel drops when the process ends, however it ends: a worker
starting up zeroes the columns of workers that are gone (a crashed worker's requests
are no longer in flight), and its own. A key that finds the table full (more than
`KEYS` labels) is counted in this process only, and logged once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import mmap
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from gateway.auth.keys import Principal
from gateway.auth.limits import InFlight

log = logging.getLogger("switchyard")

KEYS = 16384  # key labels the table holds
COLUMNS = 64  # worker columns: N, and a restart's replacements beside them
_DIGEST = 16
_COUNTS = struct.Struct(f"{COLUMNS}i")
_RECORD = _DIGEST + _COUNTS.size
_COUNT = struct.Struct("i")
_EMPTY = bytes(_DIGEST)


class SharedInFlight(InFlight):
    def __init__(self, directory: Path) -> None:
        super().__init__()  # `counts`: keys that did not fit in the table
        directory.mkdir(parents=True, exist_ok=True)
        self._column, self._claim = _claim(directory / "slots")
        self._file: BinaryIO = (directory / "table").open("a+b")
        size = KEYS * _RECORD
        with self._locked():
            if Path(self._file.name).stat().st_size < size:
                self._file.truncate(size)
        self._map = mmap.mmap(self._file.fileno(), size)
        self._records: dict[str, int] = {}  # label: offset of its counts
        self._full = False
        with self._locked():
            for column in _gone(directory / "slots", self._column):
                self._zero(column)

    @property
    def column(self) -> int:
        return self._column

    def enter(self, principal: Principal) -> bool:
        bound = principal.max_concurrent
        if bound is None:
            return True
        with self._locked():
            at = self._record(principal.label)
            if at is None:
                return super().enter(principal)
            counts = _COUNTS.unpack_from(self._map, at)
            if sum(counts) >= bound:
                return False
            _COUNT.pack_into(self._map, at + 4 * self._column, counts[self._column] + 1)
        return True

    def leave(self, principal: Principal) -> None:
        if principal.max_concurrent is None:
            return
        with self._locked():
            at = self._records.get(principal.label)
            if at is None:
                return super().leave(principal)
            mine = at + 4 * self._column
            (count,) = _COUNT.unpack_from(self._map, mine)
            _COUNT.pack_into(self._map, mine, max(0, count - 1))

    def in_flight(self, label: str) -> int:
        """The key's requests in flight in all workers."""
        with self._locked():
            at = self._record(label)
            return sum(_COUNTS.unpack_from(self._map, at)) if at is not None else 0

    def close(self) -> None:
        with self._locked():
            self._zero(self._column)
        self._map.close()
        self._file.close()
        self._claim.close()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.flock(self._file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._file, fcntl.LOCK_UN)

    def _record(self, label: str) -> int | None:
        """The offset of `label`'s counts, its record made if new (under the lock)."""
        at = self._records.get(label)
        if at is not None:
            return at
        digest = hashlib.blake2b(label.encode(), digest_size=_DIGEST).digest()
        start = int.from_bytes(digest[:8], "big") % KEYS
        for probe in range(KEYS):
            offset = ((start + probe) % KEYS) * _RECORD
            held = self._map[offset : offset + _DIGEST]
            if held == _EMPTY:
                self._map[offset : offset + _DIGEST] = digest
            elif held != digest:
                continue
            self._records[label] = offset + _DIGEST
            return offset + _DIGEST
        if not self._full:
            self._full = True
            log.error("the in-flight table holds %d keys; more are bounded per worker only", KEYS)
        return None

    def _zero(self, column: int) -> None:
        for record in range(KEYS):
            at = record * _RECORD + _DIGEST + 4 * column
            if _COUNT.unpack_from(self._map, at)[0]:
                _COUNT.pack_into(self._map, at, 0)


def _claim(slots: Path) -> tuple[int, BinaryIO]:
    """The first free worker column, and the open file whose lock makes it ours."""
    slots.mkdir(exist_ok=True)
    for column in range(COLUMNS):
        claim = (slots / str(column)).open("a+b")
        try:
            fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            claim.close()
            continue
        return column, claim
    raise RuntimeError(
        f"all {COLUMNS} worker columns in {slots} are taken: serve with fewer workers"
    )


def _gone(slots: Path, mine: int) -> list[int]:
    """The columns whose worker is gone (their lock is free), and `mine`."""
    gone = [mine]
    for column in range(COLUMNS):
        if column == mine or not (slots / str(column)).exists():
            continue
        with (slots / str(column)).open("a+b") as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            gone.append(column)
    return gone
