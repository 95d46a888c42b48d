"""API keys: who is calling, and what they may do.

Keys are held as sha256 digests only (from the config, the environment or a keys
file); a presented key is hashed and looked up, and the stored digest compared with
`hmac.compare_digest`. A digest listed more than once is revoked if any of its
entries says `revoked: true`.

The keys file is looked at once a second at most, so a key is revoked by editing the
file, with no restart. A change is applied once the file has stayed the same (inode,
size, modification time and content hash) for a second, so a file caught half-written
is never read. A file that is then missing or unusable drops the keys it held (fail
closed): an error in the log, `switchyard_keys_file_errors_total`, and only the
config's own keys left until the file is fixed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import TypeAdapter, ValidationError

from gateway.settings import AuthSettings, KeySettings

log = logging.getLogger("switchyard")

_KEY_LIST = TypeAdapter(list[KeySettings])


class KeyConfigError(Exception):
    pass


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    label: str
    admin: bool = False
    models: tuple[str, ...] = ("*",)
    rpm: int | None = None
    tpm: int | None = None
    max_tokens: int | None = None
    max_concurrent: int | None = None  # requests in flight at once (None: no bound)

    def may_use(self, model: str) -> bool:
        return any(p == "*" or fnmatch.fnmatchcase(model, p) for p in self.models)

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None


ANONYMOUS = Principal("anonymous", admin=True)  # auth off: everything is allowed


class KeyRing:
    SETTLE_S = 1.0  # a changed keys file is read once it has stayed the same this long

    def __init__(self, settings: AuthSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.errors = 0  # keys file changes that could not be used (fail closed)
        self._static = [_entry(k, settings.max_concurrent_per_key) for k in settings.keys]
        self._entries = list(self._static)
        self._applied: _Stamp | None = None  # the file the entries come from
        self._pending: tuple[_Stamp, float] | None = None  # a change, and since when
        self._checked = -math.inf
        self._reload(force=True)
        if settings.enabled and not self._entries:
            raise KeyConfigError(
                "auth is on but no API keys are configured: add auth.keys (key_sha256 from"
                " `switchyard hash-key`, or key_env) or auth.keys_file, or set"
                " auth.enabled: false for a loopback-only gateway"
            )

    @property
    def loaded(self) -> int:
        return len(self._entries)

    def authenticate(self, presented: str) -> Principal | None:
        """The principal for `presented`, or None (unknown, or revoked by any of its
        entries). Every stored digest is compared, in constant time."""
        self._reload()
        wanted = digest(presented)
        found: list[Principal | None] = []
        for stored, principal in self._entries:
            if hmac.compare_digest(stored, wanted):
                found.append(principal)
        return None if not found or None in found else found[0]

    def _reload(self, force: bool = False) -> None:
        path = self.settings.keys_file
        now = self.clock()
        if path is None or (not force and now - self._checked < 1.0):
            return
        self._checked = now
        stamp = _stamp(path)
        if stamp is None:  # written while it was read: not settled, look again
            if force:
                raise KeyConfigError(f"keys file {path} changed while it was read; start again")
            self._pending = None
            return
        if stamp == self._applied:
            self._pending = None
            return
        if not force:
            if self._pending is None or self._pending[0] != stamp:
                self._pending = (stamp, now)  # changed: read once it has settled
                return
            if now - self._pending[1] < self.SETTLE_S:
                return
        self._pending, self._applied = None, stamp
        try:
            if stamp.missing:
                raise KeyConfigError("the file is missing")
            keys = _KEY_LIST.validate_python(yaml.safe_load(stamp.text) or [])
            entries = [_entry(k, self.settings.max_concurrent_per_key) for k in keys]
        except (yaml.YAMLError, ValidationError, KeyConfigError) as exc:
            if force:
                raise KeyConfigError(f"keys file {path}: {exc}") from None
            self.errors += 1
            self._entries = list(self._static)
            log.error(
                "keys file %s is unusable (%s): its keys are dropped until it is fixed; "
                "only the config's %d keys are accepted",
                path,
                exc,
                len(self._static),
            )
            return
        self._entries = self._static + entries
        log.info("loaded %d API keys from %s", len(entries), path)


@dataclass(frozen=True, slots=True)
class _Stamp:
    """What a keys file held when read: equal stamps are the same complete file."""

    inode: int = 0
    size: int = -1
    mtime_ns: int = 0
    sha256: str = ""
    text: str = field(default="", compare=False)

    @property
    def missing(self) -> bool:
        return self.size < 0


def _stamp(path: Path) -> _Stamp | None:
    """The file as read between two stats that agree; None if they do not (it was
    being written)."""
    try:
        before = path.stat()
        data = path.read_bytes()
        after = path.stat()
    except OSError:
        return _Stamp()
    inode, size, mtime = after.st_ino, after.st_size, after.st_mtime_ns
    if (before.st_ino, before.st_size, before.st_mtime_ns) != (inode, size, mtime):
        return None
    text = data.decode("utf-8", errors="replace")
    return _Stamp(inode, size, mtime, hashlib.sha256(data).hexdigest(), text)


def _entry(key: KeySettings, default_concurrency: int | None) -> tuple[str, Principal | None]:
    if key.key_env is not None:
        value = os.environ.get(key.key_env)
        if not value:
            raise KeyConfigError(
                f"key {key.label!r}: the environment variable {key.key_env} is empty"
            )
        stored = digest(value)
    else:
        assert key.key_sha256 is not None
        stored = key.key_sha256
    if key.revoked:
        return stored, None
    principal = Principal(
        key.label,
        key.admin,
        tuple(key.models or ()),
        key.rpm,
        key.tpm,
        key.max_tokens,
        key.max_concurrent or default_concurrency,
    )
    return stored, principal
