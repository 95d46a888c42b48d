"""`switchyard-artifact.json`: what an artifact directory is and where it came from.

An artifact directory is complete exactly when its manifest is present: writers
build in a temporary sibling directory, write the manifest last, then rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MANIFEST = "switchyard-artifact.json"
_HASHED_SUFFIXES = (".safetensors", ".json", ".jinja", ".model", ".txt", ".yaml")


class ArtifactError(Exception):
    pass


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_digests(directory: Path) -> dict[str, str]:
    return {
        p.name: sha256_file(p)
        for p in sorted(directory.iterdir())
        if p.is_file() and p.suffix in _HASHED_SUFFIXES and p.name != MANIFEST
    }


def read_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def require_model(path: Path, what: str = "model") -> Path:
    """A directory with a `config.json` (an HF model), or a clear error."""
    if not (path / "config.json").is_file():
        raise ArtifactError(
            f"{path} is not a {what} directory (no config.json). "
            "Pass a Hugging Face model directory, e.g. models/smollm2-135m-instruct "
            "(`make model` prepares it)."
        )
    return path


def source_record(path: Path) -> dict[str, Any]:
    """How a manifest names its source: artifact id, path, and sha256 of its weights."""
    weights = {p.name: sha256_file(p) for p in sorted(path.glob("*.safetensors"))}
    if not weights:
        raise ArtifactError(f"{path} has no .safetensors weights.")
    return {"id": (read_manifest(path) or {}).get("id"), "path": str(path), "weights": weights}


def check_writable(target: Path) -> None:
    """Fail before minutes of work, not after, when `target` cannot be written."""
    if read_manifest(target) is not None:
        raise ArtifactError(f"{target} already exists; remove it to rebuild.")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{target.name}.probe-", dir=target.parent):
            pass
    except OSError as exc:
        raise ArtifactError(
            f"cannot write the artifact to {target}: {exc.strerror or exc}. "
            "Choose an --out in a writable directory."
        ) from exc


def verify(directory: Path) -> dict[str, Any]:
    """Check every recorded file against its sha256; return the manifest."""
    manifest = read_manifest(directory)
    if manifest is None:
        raise ArtifactError(f"{directory} has no {MANIFEST}: it is not a finished artifact.")
    for name, expected in manifest["files"].items():
        path = directory / name
        if not path.is_file() or sha256_file(path) != expected:
            raise ArtifactError(
                f"{path} is missing or does not match its checksum in {MANIFEST}. "
                f"Delete {directory} and build it again."
            )
    return manifest


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary directory beside `target`; on success it becomes `target`.

    On any error the temporary directory is removed, so a half-written artifact is
    never visible under the final name. A leftover `target` without a manifest (from
    a tool that did not use this) is replaced.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield tmp
        if not (tmp / MANIFEST).is_file():
            raise ArtifactError(f"internal error: {tmp} was finished without a manifest")
        if target.exists():
            if read_manifest(target) is not None:
                raise ArtifactError(f"{target} already exists; remove it to rebuild.")
            shutil.rmtree(target)
        for path in [tmp, *tmp.rglob("*")]:  # readable by engines running as other users
            path.chmod(0o755 if path.is_dir() else 0o644)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_manifest(directory: Path, **fields: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "format": 1,
        **fields,
        "files": file_digests(directory),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def tool_versions(*packages: str) -> Mapping[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str] = {}
    for name in packages:
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found
