from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.redis_server", "tests.replicas"]  # redis_server, lora_replicas

ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL = ROOT / "models" / "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def demo_model() -> Path:
    if not (DEMO_MODEL / "switchyard-artifact.json").is_file():
        pytest.fail(f"{DEMO_MODEL} is missing: run `make test`, which prepares it first.")
    return DEMO_MODEL
