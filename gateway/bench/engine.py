"""`make bench-engine`: the gateway's in-process vLLM vs vLLM's own OpenAI server.

Same model, same engine settings, same load (prompts, concurrency, max_tokens,
temperature 0), one server after the other on this machine, in one run. Prints
output tokens/s and TTFT p50/p99 for both and their ratios, and writes
docs/benchmarks/engine.{json,md}.

    python -m gateway.bench.engine [--requests 64] [--concurrency 8] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import yaml

from gateway.bench.load import Load, Result, run

ROOT = Path(__file__).resolve().parents[2]
MODEL_ID = "smollm2-135m-instruct"


@contextlib.contextmanager
def server(cmd: list[str], url: str, env: dict[str, str], log: Path) -> Iterator[None]:
    """Run `cmd` in its own process group until the block ends; wait for /v1/models."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 600
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{cmd[2]} exited early; see {log}")
                with contextlib.suppress(httpx.HTTPError):
                    r = httpx.post(
                        url + "/v1/completions",
                        timeout=30,
                        json={"model": MODEL_ID, "prompt": "hi", "max_tokens": 1},
                    )
                    if r.status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{cmd[2]} did not become ready; see {log}")
                time.sleep(1)
            yield
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def machine() -> dict[str, Any]:
    import vllm

    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "vllm": vllm.__version__,
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(ROOT / "models" / MODEL_ID))
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--port", type=int, default=8750)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    load = Load(args.requests, args.concurrency, args.max_tokens)
    url = f"http://127.0.0.1:{args.port}"
    engine = {
        "model": args.model,
        "max_model_len": 2048,
        "enforce_eager": True,
        "cpu_kvcache_space_gib": 2,
    }
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "PYTHONUNBUFFERED": "1"}
    work = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    config = work / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "engines": [
                    {"name": "local", "kind": "vllm", "model_id": MODEL_ID, "options": engine}
                ]
            }
        )
    )
    contenders = {
        "switchyard (in-process vLLM)": [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--config",
            str(config),
            "--port",
            str(args.port),
            "--log-level",
            "warning",
        ],
        "vllm serve (OpenAI server)": [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            args.model,
            "--served-model-name",
            MODEL_ID,
            "--max-model-len",
            "2048",
            "--enforce-eager",
            "--port",
            str(args.port),
            "--host",
            "127.0.0.1",
            "--uvicorn-log-level",
            "warning",
        ],
    }
    results: dict[str, Result] = {}
    for name, cmd in contenders.items():
        print(f">>> {name}: starting", file=sys.stderr)
        with server(cmd, url, env, work / f"{len(results)}.log"):
            print(f">>> {name}: {load}", file=sys.stderr)
            results[name] = asyncio.run(run(url, MODEL_ID, load))
    ours, ref = results.values()
    ratios = {
        "throughput (ours/vllm, higher is better)": round(ours.tokens_per_s / ref.tokens_per_s, 3),
        "ttft_p50 (ours/vllm, lower is better)": round(ours.ttft_p50_ms / ref.ttft_p50_ms, 3),
        "ttft_p99 (ours/vllm, lower is better)": round(ours.ttft_p99_ms / ref.ttft_p99_ms, 3),
    }
    report = {
        "benchmark": "engine path",
        "command": "make bench-engine",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "load": dataclasses.asdict(load),
        "results": {name: r.row() for name, r in results.items()},
        "ratios": ratios,
    }
    table = _markdown(report)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engine.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "engine.md").write_text(table)
    return 0


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Engine path: in-process vLLM behind Switchyard vs vLLM's own server",
        "",
        f"`{report['command']}` on {report['machine']['cpus']} CPUs "
        f"({report['machine']['cpu']}), vLLM {report['machine']['vllm']}, {report['when']}.",
        f"Load: {report['load']}",
        "",
        "| server | tokens/s | TTFT p50 ms | TTFT p99 ms | e2e p50 ms | failures |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in report["results"].items():
        lines.append(
            f"| {name} | {r['tokens_per_s']} | {r['ttft_p50_ms']} | "
            f"{r['ttft_p99_ms']} | {r['e2e_p50_ms']} | {r['failures']} |"
        )
    lines += ["", *(f"- {k}: **{v}**" for k, v in report["ratios"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
