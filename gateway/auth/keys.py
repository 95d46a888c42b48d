"""API keys: who is calling, and what they may do.

Keys are held as sha256 digests only (from the config, the environment or a keys
file); a presented key is hashed and looked up, and the stored digest compared with
`hmac.compare_digest`. The keys file is re-read when it changes (checked at most once
a second), so a key is revoked by editing the file: no restart.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass

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

    def may_use(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None


ANONYMOUS = Principal("anonymous", admin=True)  # auth off: everything is allowed


class KeyRing:
    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._static = [_entry(k) for k in settings.keys]
        self._entries = list(self._static)
        self._file_stamp: int | None = None
        self._checked = 0.0
        self._reload(force=True)
        if settings.enabled and not self._entries:
            raise KeyConfigError(
                "auth is on but no API keys are configured: add auth.keys (key_sha256 from"
                " `switchyard hash-key`, or key_env) or auth.keys_file, or set"
                " auth.enabled: false for a loopback-only gateway"
            )

    def authenticate(self, presented: str) -> Principal | None:
        """The principal for `presented`, or None (unknown or revoked). Every stored
        digest is compared, in constant time, whichever matches."""
        self._reload()
        wanted = digest(presented)
        found: Principal | None = None
        for stored, principal in self._entries:
            if hmac.compare_digest(stored, wanted):
                found = principal
        return found

    def _reload(self, force: bool = False) -> None:
        path = self.settings.keys_file
        now = time.monotonic()
        if path is None or (not force and now - self._checked < 1.0):
            return
        self._checked = now
        try:
            stamp = path.stat().st_mtime_ns
            if stamp == self._file_stamp:
                return
            keys = _KEY_LIST.validate_python(yaml.safe_load(path.read_text()) or [])
            entries = [_entry(k) for k in keys]
        except (OSError, yaml.YAMLError, ValidationError, KeyConfigError) as exc:
            if force:
                raise KeyConfigError(f"keys file {path}: {exc}") from None
            log.warning("keys file %s is unusable (%s); keeping the keys loaded", path, exc)
            return
        self._file_stamp = stamp
        self._entries = self._static + entries
        log.info("loaded %d API keys from %s", len(entries), path)


def _entry(key: KeySettings) -> tuple[str, Principal | None]:
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
    principal = Principal(key.label, key.admin, tuple(key.models), key.rpm, key.tpm, key.max_tokens)
    return stored, principal
