"""`make bench-routing`: adapter_affinity vs round_robin on two vLLM replicas, and the
latency the gateway adds over calling one replica directly.

Two `vllm serve` replicas of the demo model (one core each, LoRA on, max_loras=1,
so a replica runs one adapter per batch), four adapters with Zipf popularity
(s=1: 48 %, 24 %, 16 %, 12 % of requests), the same seeded request sequence for
both policies, each behind its own `switchyard serve` process; rounds alternate the
order (A B B A). Prints output tokens/s and TTFT p99 per policy and their ratios.
The four adapters are the two trained demo adapters under two names each: vLLM
treats each name as its own LoRA (its own slot), which is what routing is about.

Then, at concurrency 1, requests alternate between the gateway and replica r0
directly (non-streamed, 4 tokens, temperature 0): the gateway's added latency is the
difference of the p50s and of the p99s.

    switchyard bench routing [--requests 96] [--concurrency 12] [--max-tokens 32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from gateway.bench.engine import MODEL_ID, ROOT, machine
from gateway.bench.load import Load, Sample, alternating, percentile, results_table, run, summarize
from gateway.bench.process import (
    answers,
    gateway_command,
    lora_replica,
    server_process,
    write_report,
)

ADAPTERS = {"a1": "shout", "a2": "json", "a3": "shout", "a4": "json"}
POLICIES = ("adapter_affinity", "round_robin")
BASE_NAME = "smollm2-135m-instruct-b179c9523d0e"


def zipf_models(names: list[str], count: int, s: float = 1.0, seed: int = 0) -> list[str]:
    weights = [1 / (rank + 1) ** s for rank in range(len(names))]
    return random.Random(seed).choices(names, weights, k=count)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(ROOT / "models" / MODEL_ID))
    Load.add_arguments(parser)
    parser.set_defaults(requests=96, concurrency=12, max_tokens=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latency-requests", type=int, default=100)
    parser.add_argument("--port", type=int, default=8760)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    load = Load.from_arguments(args)
    work = Path(tempfile.mkdtemp(prefix="switchyard-bench-routing-"))
    root = work / "adapters"
    for name, source in ADAPTERS.items():
        shutil.copytree(ROOT / "adapters" / source, root / name)
    env = dict(os.environ)
    replica_urls = [f"http://127.0.0.1:{args.port + 1 + i}" for i in range(2)]
    models = zipf_models(list(ADAPTERS), load.requests)
    samples: dict[str, list[Sample]] = {policy: [] for policy in POLICIES}
    with ExitStack() as stack:
        for i, url in enumerate(replica_urls):
            print(f">>> starting replica r{i} on {url}", file=sys.stderr)
            command, replica_env = lora_replica(args.model, MODEL_ID, args.port + 1 + i, core=i)
            stack.enter_context(
                server_process(command, answers(url, MODEL_ID), work / f"r{i}.log", replica_env)
            )
        for _, policy in alternating(POLICIES, args.rounds):
            with _gateway(args.port, replica_urls, root, policy, work, env):
                samples[policy].append(asyncio.run(run(_url(args.port), models, load)))
        print(">>> gateway-added latency (concurrency 1)", file=sys.stderr)
        with _gateway(args.port, replica_urls, root, "least_outstanding", work, env):
            latency = asyncio.run(
                _added_latency(_url(args.port), replica_urls[0], args.latency_requests)
            )
    results = {policy: summarize(runs) for policy, runs in samples.items()}
    affinity, rr = results["adapter_affinity"], results["round_robin"]
    ratios = {
        "throughput (affinity/round_robin, higher is better)": round(
            affinity.tokens_per_s / rr.tokens_per_s, 3
        ),
        "ttft_p99 (affinity/round_robin, lower is better)": round(
            affinity.ttft_p99_ms / rr.ttft_p99_ms, 3
        ),
    }
    report = {
        "benchmark": "routing",
        "command": "make bench-routing",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load": {**dataclasses.asdict(load), "rounds": args.rounds, "adapters": "zipf s=1 x4"},
        "results": {policy: r.row() for policy, r in results.items()},
        "ratios": ratios,
        "added_latency": latency,
    }
    write_report(args.out, "routing", report, _markdown(report))
    return 0


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def _gateway(
    port: int, replicas: list[str], root: Path, policy: str, work: Path, env: dict[str, str]
) -> Any:
    engines = [
        {
            "name": f"r{i}",
            "kind": "openai_remote",
            "model_id": MODEL_ID,
            "options": {"url": url, "enable_lora": True, "max_loras": 1},
            "adapter_root": str(root),
            "base_names": [BASE_NAME],
            "adapters": [{"name": name, "path": str(root / name)} for name in ADAPTERS],
        }
        for i, url in enumerate(replicas)
    ]
    command = gateway_command(engines, port, work, balancer={"policy": policy})
    ready = answers(_url(port), list(ADAPTERS)[-1])
    return server_process(command, ready, work / f"gateway-{policy}.log", env)


async def _added_latency(gateway: str, direct: str, count: int) -> dict[str, float]:
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 4,
        "temperature": 0,
    }
    times: dict[str, list[float]] = {"gateway": [], "direct": []}
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(count + 4):
            for name, url in (("gateway", gateway), ("direct", direct)):
                start = time.perf_counter()
                r = await client.post(url + "/v1/chat/completions", json=body)
                r.raise_for_status()
                if i >= 4:  # warm-up
                    times[name].append(time.perf_counter() - start)
    out: dict[str, float] = {}
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        g, d = percentile(times["gateway"], q), percentile(times["direct"], q)
        out[f"direct_{label}_ms"] = round(d * 1000, 2)
        out[f"gateway_{label}_ms"] = round(g * 1000, 2)
        out[f"added_{label}_ms"] = round((g - d) * 1000, 2)
    diffs = [g - d for g, d in zip(times["gateway"], times["direct"], strict=True)]
    out["added_median_of_pairs_ms"] = round(statistics.median(diffs) * 1000, 2)
    return out


def _markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Routing: adapter_affinity vs round_robin on two vLLM replicas",
        "",
        f"`{report['command']}` on {m['cpus']} CPUs ({m['cpu']}), vLLM {m['vllm']}, "
        f"{report['when']}. Two `vllm serve` replicas (one core each, max_loras=1), four "
        "adapters with Zipf popularity (s=1).",
        f"Load: {report['load']}",
        "",
        *results_table(report["results"], "policy"),
    ]
    lines += ["", *(f"- {k}: **{v}**" for k, v in report["ratios"].items()), ""]
    lat = report["added_latency"]
    lines += [
        "## Gateway-added latency (concurrency 1, 4 tokens, non-streamed)",
        "",
        "| | p50 ms | p99 ms |",
        "| --- | --- | --- |",
        f"| direct to r0 | {lat['direct_p50_ms']} | {lat['direct_p99_ms']} |",
        f"| through the gateway | {lat['gateway_p50_ms']} | {lat['gateway_p99_ms']} |",
        f"| added | {lat['added_p50_ms']} | {lat['added_p99_ms']} |",
        "",
        f"Median of paired differences: {lat['added_median_of_pairs_ms']} ms.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
