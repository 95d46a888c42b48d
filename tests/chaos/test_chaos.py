"""A short seeded chaos run inside `make test` (`make chaos` runs ten minutes): real
`vllm serve` replicas, a real Redis, two gateway processes, faults injected on a
seeded schedule, and every invariant checked after the run, by name. A failing
seed replays with `python -m tests.chaos --seed SEED --duration SECONDS`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.run import chaos
from tests.replicas import Replica

SEED = int(os.environ.get("SWITCHYARD_CHAOS_SEED", "1811"))
DURATION_S = 75.0

pytestmark = pytest.mark.vllm


def test_the_promises_hold_under_seeded_faults(
    lora_replicas: list[Replica], tmp_path: Path
) -> None:
    report = chaos(lora_replicas, tmp_path, SEED, DURATION_S)
    print(report.markdown())
    summary = report.summary()
    assert summary["faults"].keys() >= {"kill", "freeze", "error", "garbage", "cut"}
    assert summary["faults"].keys() >= {"redis_kill", "redis_stall"}
    failed = {c.name: c.violations[:5] for c in report.checks if c.violations}
    if failed:
        report.dump(tmp_path / "chaos.jsonl")
    assert not failed, f"seed {SEED}: invariants violated (every request: {tmp_path}): {failed}"
