"""`make bench-artifacts`: each artifact of the demo model vs bf16, through the gateway.

One run, one model at a time (same engine settings, same load: prompts, concurrency,
max_tokens, temperature 0): the time from `switchyard serve` to the first answer
(load), output tokens/s and TTFT, the memory (PSS) of the gateway and its engine
processes together, the weights on disk, and the quality delta `verify`
recorded in each manifest (token agreement, perplexity on the source's answers).
Writes docs/benchmarks/artifacts.{json,md}.

    switchyard bench artifacts [--requests 64] [--concurrency 8] [--max-tokens 64]
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.bench.engine import machine
from gateway.bench.load import Load, bench_parser, run, summarize
from gateway.bench.process import answers, gateway_command, server_process, write_report

ROOT = Path(__file__).resolve().parents[2]
BUILDS = {
    "bf16": ROOT / "models" / "smollm2-135m-instruct",
    "gptq": ROOT / "artifacts" / "smollm2-135m-instruct-gptq",
    "awq": ROOT / "artifacts" / "smollm2-135m-instruct-awq",
    "w8a8": ROOT / "artifacts" / "smollm2-135m-instruct-w8a8",
    "merged shout": ROOT / "artifacts" / "smollm2-135m-instruct-shout",
}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, 8751)
    args = parser.parse_args(argv)
    load = Load.from_arguments(args)
    missing = [str(p) for p in BUILDS.values() if not (p / "switchyard-artifact.json").is_file()]
    if missing:
        print(f"missing: {', '.join(missing)}; run `make artifacts` first.", file=sys.stderr)
        return 2
    url = f"http://127.0.0.1:{args.port}"
    work = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rows = {}
    for name, path in BUILDS.items():
        options = {
            "model": str(path),
            "max_model_len": 2048,
            "enforce_eager": True,
            "cpu_kvcache_space_gib": 1,
        }
        engine = [{"name": "local", "kind": "vllm", "model_id": name, "options": options}]
        command = gateway_command(engine, args.port, work)
        started = time.monotonic()
        with server_process(command, answers(url, name), work / f"{path.name}.log", env) as proc:
            load_s = time.monotonic() - started
            result = summarize([asyncio.run(run(url, name, load))])
            memory = _memory_mib(proc.pid)
        manifest = json.loads((path / "switchyard-artifact.json").read_text())
        quality = manifest.get("eval") or {}
        rows[name] = {
            "artifact": manifest["id"],
            "load_s": round(load_s, 1),
            "tokens_per_s": result.tokens_per_s,
            "ttft_p50_ms": result.ttft_p50_ms,
            "memory_pss_mib": memory,
            "weights_mib": round(
                sum(f.stat().st_size for f in path.glob("*.safetensors")) / 2**20, 1
            ),
            "token_agreement": quality.get("token_agreement", "—"),
            "perplexity_delta_pct": quality.get("perplexity_delta_pct", "—"),
            "failures": result.failures,
        }
    base = rows["bf16"]
    for row in rows.values():
        row["tokens_per_s_vs_bf16"] = round(row["tokens_per_s"] / base["tokens_per_s"], 3)
        row["memory_vs_bf16"] = round(row["memory_pss_mib"] / base["memory_pss_mib"], 3)
        row["load_vs_bf16"] = round(row["load_s"] / base["load_s"], 3)
    report = {
        "benchmark": "artifacts vs bf16",
        "command": "make bench-artifacts",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load": dataclasses.asdict(load),
        "results": rows,
    }
    write_report(args.out, "artifacts", report, _markdown(report))
    return 0


def _memory_mib(pid: int) -> float:
    """Proportional set size (PSS) of the process and its descendants, summed, right
    after the load: shared pages (libraries, the shared-memory KV cache) counted once
    in all, not once per process as summed RSS would."""
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    pss: int = sum(p.memory_full_info().pss for p in procs)
    return round(pss / 2**20, 1)


def _markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Artifacts vs bf16 through the gateway (in-process vLLM)",
        "",
        f"`{report['command']}` on {m['cpus']} CPUs ({m['cpu']}), vLLM {m['vllm']}, "
        f"{report['when']}. Load: {report['load']}, temperature 0, one model served at a time.",
        "",
        "| model | tokens/s | x bf16 | TTFT p50 ms | memory (PSS) MiB | x bf16 | load s | x bf16 "
        "| weights MiB | token agreement | perplexity Δ % |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in report["results"].items():
        lines.append(
            f"| {name} | {r['tokens_per_s']} | {r['tokens_per_s_vs_bf16']} | {r['ttft_p50_ms']} "
            f"| {r['memory_pss_mib']} | {r['memory_vs_bf16']} "
            f"| {r['load_s']} | {r['load_vs_bf16']} "
            f"| {r['weights_mib']} | {r['token_agreement']} | {r['perplexity_delta_pct']} |"
        )
    lines += [
        "",
        "Token agreement and perplexity Δ come from each manifest (`switchyard-build verify` "
        "measures them again): teacher-forced top-1 agreement with the source's greedy "
        "answers to data/eval_prompts.txt, and the artifact's perplexity on those answers "
        "relative to the source's. The merged model's source is bf16 + the `shout` adapter.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
