"""The key ring and its keys file, on a clock the test moves: a revoked entry beats a
duplicate that is not; a deleted or unparsable file drops its keys (fail closed,
counted); a file is read only once it has stayed the same for a second, so one caught
half-written is never read."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.auth.keys import KeyRing, digest
from gateway.settings import AuthSettings

CONFIG_KEY, FILE_KEY, OTHER_KEY = "sy-config", "sy-file", "sy-other"


def entry(secret: str, label: str, revoked: bool = False) -> str:
    flag = str(revoked).lower()
    return f"- {{label: {label}, key_sha256: {digest(secret)}, models: ['*'], revoked: {flag}}}\n"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float = 1.0) -> None:
        self.now += seconds


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(entry(FILE_KEY, "file") + entry(OTHER_KEY, "other"))
    return path


def ring(keys_file: Path, clock: Clock) -> KeyRing:
    config = [{"label": "config", "key_sha256": digest(CONFIG_KEY), "models": ["*"]}]
    return KeyRing(AuthSettings(keys=config, keys_file=keys_file), clock)


def settle(keys: KeyRing, clock: Clock) -> None:
    """Two looks a second apart: a change seen, then read."""
    for _ in range(2):
        clock.tick()
        keys.authenticate("anything")


def test_revoked_wins_over_a_duplicate_entry(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    for lines in (
        entry(FILE_KEY, "old", revoked=True) + entry(FILE_KEY, "new"),
        entry(FILE_KEY, "new") + entry(FILE_KEY, "old", revoked=True),
    ):
        path.write_text(lines)
        keys = ring(path, Clock())
        assert keys.authenticate(FILE_KEY) is None
    config = [{"label": "config", "key_sha256": digest(FILE_KEY), "models": ["*"], "revoked": True}]
    path.write_text(entry(FILE_KEY, "file"))
    keys = KeyRing(AuthSettings(keys=config, keys_file=path))
    assert keys.authenticate(FILE_KEY) is None  # revoked in the config: the file cannot undo it


def test_a_deleted_or_unparsable_file_drops_its_keys(keys_file: Path) -> None:
    clock = Clock()
    keys = ring(keys_file, clock)
    principal = keys.authenticate(FILE_KEY)
    assert principal is not None
    assert principal.label == "file"
    keys_file.unlink()
    settle(keys, clock)
    assert keys.authenticate(FILE_KEY) is None
    assert keys.authenticate(CONFIG_KEY) is not None  # the config's own keys stay
    assert keys.errors == 1
    keys_file.write_text(entry(FILE_KEY, "file"))
    settle(keys, clock)
    assert keys.authenticate(FILE_KEY) is not None
    keys_file.write_text("- {label: broken, key_sha256: [\n")
    settle(keys, clock)
    assert keys.authenticate(FILE_KEY) is None
    assert keys.errors == 2
    assert keys.loaded == 1


def test_a_half_written_file_is_never_read(keys_file: Path) -> None:
    clock = Clock()
    keys = ring(keys_file, clock)
    whole = entry(FILE_KEY, "file", revoked=True) + entry(OTHER_KEY, "other")
    keys_file.write_text(whole[: len(whole) // 2])  # a writer half-way through
    clock.tick()
    assert keys.authenticate(OTHER_KEY) is not None  # a change seen, not read yet
    keys_file.write_text(whole)  # the writer finished before it settled
    clock.tick()
    assert keys.authenticate(FILE_KEY) is not None  # a new change: not read yet
    assert keys.errors == 0
    clock.tick()
    assert keys.authenticate(FILE_KEY) is None  # settled: read, revoked
    assert keys.authenticate(OTHER_KEY) is not None
    assert keys.errors == 0  # the half file was never parsed


def test_an_unchanged_file_is_not_read_again(
    keys_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    keys = ring(keys_file, clock)
    keys_file.touch()  # a new modification time, the same content: a change all the same
    settle(keys, clock)
    with caplog.at_level("INFO", logger="switchyard"):
        settle(keys, clock)
    assert "loaded" not in caplog.text
    assert keys.authenticate(FILE_KEY) is not None
