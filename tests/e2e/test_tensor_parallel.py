"""Tensor parallelism on CPU: the demo model (9 attention heads, 3 KV heads) split over
three workers, served by `switchyard serve` in its own process. Slow (minutes)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.bench.process import answers, gateway_command, server_process
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
                    # In bf16 the greedy TP=3 answer left TP=1's at the first token, where
                    # the top two candidates are 0.12 nats apart; fp32 keeps them in step.
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
    work = tmp_path_factory.mktemp("tp3")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = gateway_command(config["engines"], port, work)
    ready = answers(url, "smollm2-tp3")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with server_process(cmd, ready, work / "server.log", env, timeout=900):
        yield url


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
    body = {
        "model": "smollm2-tp3",
        "prompt": "The capital of France is",
        "max_tokens": 4,
        "temperature": 0,
    }
    r = httpx.post(tp3_server + "/v1/completions", json=body, timeout=300)
    assert "Paris" in r.json()["choices"][0]["text"]
