"""`switchyard-build` in its own environment (.build-venv, made by `make test`), run as
a user runs it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / ".build-venv" / "bin" / "switchyard-build"


def switchyard_build(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    if not BUILD.is_file():
        pytest.fail(f"{BUILD} is missing: run `make test`, which creates the build environment.")
    done = subprocess.run(
        [str(BUILD), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    if check and done.returncode != 0:
        raise AssertionError(f"switchyard-build {args[0]} failed:\n{done.stderr[-3000:]}")
    return done
