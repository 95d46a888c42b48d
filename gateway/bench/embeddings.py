"""`make bench-embeddings`: `/v1/embeddings` through the gateway's in-process vLLM
(the pooling runner) vs vLLM's own server (`vllm serve --runner pooling`).

Same model, same engine settings, same requests: batches of `--batch` short texts
(the prompts in loadtest/prompts.txt, each request's numbered apart so no two requests
are alike), sent in a closed loop at `--concurrency`, one server after the other on
this machine, in one run; over `--rounds` (4 by default: a round's requests/s varies
by several per cent here, more than the two servers differ) the order alternates (A B
B A ...) so drift in the machine weighs on both alike, and each side's requests are
pooled; each round's figure is reported too.
Every answer is checked (status 200, one vector per text). Prints requests/s, texts/s
and latency p50/p99 for both and their ratios, and writes
docs/benchmarks/embeddings.{json,md}.

    switchyard bench embeddings [--requests 48] [--batch 32] [--concurrency 4] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from gateway.bench.engine import machine
from gateway.bench.load import percentile, prompts
from gateway.bench.process import (
    embeds,
    gateway_command,
    serve_in_turns,
    vllm_server_command,
    write_report,
)

ROOT = Path(__file__).resolve().parents[2]
MODEL_ID = "smollm2-135m-embed"
THROUGHPUT = "requests/s (ours/vllm, higher is better)"


@dataclass(frozen=True, slots=True)
class Load:
    requests: int = 48
    batch: int = 32
    concurrency: int = 4
    warmup: int = 4

    def texts(self, i: int) -> list[str]:
        """Request i's texts: the prompts in turn, numbered with the request."""
        lines = prompts()
        return [f"{i}: {lines[(i * self.batch + j) % len(lines)]}" for j in range(self.batch)]


@dataclass(slots=True)
class Sample:
    latencies: list[float]
    wall_s: float
    failures: int


@dataclass(frozen=True, slots=True)
class Result:
    requests: int
    failures: int
    wall_s: float
    requests_per_s: float
    texts_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float


async def _one(client: httpx.AsyncClient, url: str, texts: list[str]) -> float:
    start = time.perf_counter()
    r = await client.post(url + "/v1/embeddings", json={"model": MODEL_ID, "input": texts})
    elapsed = time.perf_counter() - start
    r.raise_for_status()
    data = r.json()["data"]
    if len(data) != len(texts) or not all(d["embedding"] for d in data):
        raise httpx.HTTPError(f"{len(data)} vectors for {len(texts)} texts")
    return elapsed


async def run(url: str, load: Load) -> Sample:
    limits = httpx.Limits(max_connections=load.concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        for i in range(load.warmup):
            await _one(client, url, load.texts(-1 - i))
        pending = list(range(load.requests))
        latencies: list[float] = []
        failures = 0

        async def worker() -> None:
            nonlocal failures
            while pending:
                i = pending.pop(0)
                try:
                    latencies.append(await _one(client, url, load.texts(i)))
                except httpx.HTTPError:
                    failures += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(load.concurrency)))
        wall = time.perf_counter() - start
    return Sample(latencies, wall, failures)


def summarize(samples: list[Sample], load: Load) -> Result:
    latencies = [t for s in samples for t in s.latencies]
    wall = sum(s.wall_s for s in samples)
    return Result(
        requests=len(latencies) + sum(s.failures for s in samples),
        failures=sum(s.failures for s in samples),
        wall_s=round(wall, 3),
        requests_per_s=round(len(latencies) / wall, 3),
        texts_per_s=round(len(latencies) * load.batch / wall, 1),
        latency_p50_ms=round(percentile(latencies, 0.5) * 1000, 1),
        latency_p99_ms=round(percentile(latencies, 0.99) * 1000, 1),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default = Load()
    parser.add_argument("--model", default=str(ROOT / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--requests", type=int, default=default.requests)
    parser.add_argument("--batch", type=int, default=default.batch)
    parser.add_argument("--concurrency", type=int, default=default.concurrency)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--port", type=int, default=8760)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    load = Load(args.requests, args.batch, args.concurrency)
    url = f"http://127.0.0.1:{args.port}"
    options = {
        "model": args.model,
        "runner": "pooling",
        "max_model_len": 2048,
        "enforce_eager": True,
        "cpu_kvcache_space_gib": 1,
    }
    flags = ["--max-model-len", "2048", "--runner", "pooling", "--disable-log-stats"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1"}
    work = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    gateway = [{"name": "local-embed", "kind": "vllm", "model_id": MODEL_ID, "options": options}]
    contenders = {
        "switchyard (in-process vLLM, pooling)": gateway_command(gateway, args.port, work),
        "vllm serve --runner pooling": vllm_server_command(args.model, MODEL_ID, args.port, *flags),
    }
    samples = serve_in_turns(
        contenders,
        args.rounds,
        embeds(url, MODEL_ID),
        env,
        work,
        lambda _: asyncio.run(run(url, load)),
    )
    results = {name: summarize(runs, load) for name, runs in samples.items()}
    ours, ref = results.values()
    report = {
        "benchmark": "embeddings",
        "command": "switchyard bench embeddings",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load": {**asdict(load), "rounds": args.rounds},
        "results": {name: asdict(r) for name, r in results.items()},
        "requests_per_s_by_round": {
            name: [round(len(s.latencies) / s.wall_s, 3) for s in runs]
            for name, runs in samples.items()
        },
        "ratios": {
            THROUGHPUT: round(ours.requests_per_s / ref.requests_per_s, 3),
            "latency_p50 (ours/vllm, lower is better)": round(
                ours.latency_p50_ms / ref.latency_p50_ms, 3
            ),
            "latency_p99 (ours/vllm, lower is better)": round(
                ours.latency_p99_ms / ref.latency_p99_ms, 3
            ),
        },
    }
    write_report(args.out, "embeddings", report, _markdown(report))
    return 1 if ours.failures or ref.failures else 0


def _markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Embeddings: in-process vLLM (pooling runner) behind Switchyard vs "
        "`vllm serve --runner pooling`",
        "",
        f"`{report['command']}` on {m['cpus']} CPUs ({m['cpu']}), vLLM {m['vllm']}, "
        f"{report['when']}.",
        f"Load: {report['load']}",
        "",
        "| server | requests/s | texts/s | latency p50 ms | latency p99 ms | failures |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in report["results"].items():
        lines.append(
            f"| {name} | {r['requests_per_s']} | {r['texts_per_s']} | {r['latency_p50_ms']} "
            f"| {r['latency_p99_ms']} | {r['failures']} |"
        )
    lines += ["", *(f"- {k}: **{v}**" for k, v in report["ratios"].items())]
    rounds = report["requests_per_s_by_round"]
    lines += ["", "Requests/s by round:", *(f"- {name}: {r}" for name, r in rounds.items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
