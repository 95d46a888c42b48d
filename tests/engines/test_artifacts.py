from __future__ import annotations

from pathlib import Path

import pytest

from engines.artifacts.manifest import (
    MANIFEST,
    ArtifactError,
    atomic_directory,
    verify,
    write_manifest,
)


def test_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:  # noqa: PT012
        (tmp / "weights.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-way")
    assert list(tmp_path.iterdir()) == []


def test_a_finished_build_is_verified_and_tampering_is_caught(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "weights.safetensors").write_bytes(b"real weights")
        write_manifest(tmp, kind="test")
    assert (target / MANIFEST).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert verify(target)["kind"] == "test"
    (target / "weights.safetensors").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="checksum"):
        verify(target)


def test_a_finished_build_is_readable_by_other_users(tmp_path: Path) -> None:
    """Engines in containers run as their own uid: a file a tool wrote 0600 is 0644."""
    with atomic_directory(tmp_path / "model") as tmp:
        (tmp / "sub").mkdir(mode=0o700)
        (tmp / "sub" / "weights.safetensors").write_bytes(b"w")
        (tmp / "sub" / "weights.safetensors").chmod(0o600)
        write_manifest(tmp, kind="test")
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")}
    assert modes == {"model": 0o755, "sub": 0o755, "weights.safetensors": 0o644, MANIFEST: 0o644}


def test_a_directory_without_manifest_is_not_an_artifact(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    with pytest.raises(ArtifactError, match="not a finished artifact"):
        verify(tmp_path / "half")
