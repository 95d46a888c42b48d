"""Tensor parallelism on CPU: the demo model (9 attention heads, 3 KV heads) split over
three workers, served by `switchyard serve` in its own process. Slow (minutes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.servers import free_port

pytestmark = [pytest.mark.vllm, pytest.mark.tp]


@pytest.fixture(scope="module")
def tp3_server(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = {
        "engines": [
            {
                "name": "tp3",
                "kind": "vllm",
                "model_id": "smollm2-tp3",
                "options": {
                    "model": str(demo_model),
                    "tensor_parallel_size": 3,
                    # fp32: bf16 all-reduce noise flips this small model's first token
                    "dtype": "float32",
                    "distributed_executor_backend": "mp",
                    "enforce_eager": True,
                    "max_model_len": 1024,
                    "cpu_kvcache_space_gib": 1,
                    # Three workers on two cores: bind each worker's threads by hand.
                    "cpu_omp_threads_bind": "0|1|0",
                },
            }
        ]
    }
    path = tmp_path_factory.mktemp("tp3") / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = (path.parent / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(url + "/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(2)
        else:
            log.flush()
            tail = (path.parent / "server.log").read_text()[-4000:]
            pytest.fail(f"the TP=3 gateway did not become ready:\n{tail}")
        yield url
    finally:
        # End the whole process group we started (gateway + vLLM workers), by its id.
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def test_tp3_engine_answers_correctly(tp3_server: str) -> None:
    body = {
        "model": "smollm2-tp3",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0,
        "max_tokens": 24,
    }
    r = httpx.post(tp3_server + "/v1/chat/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["choices"][0]["message"]["content"]
