"""`make bench`: the side-by-side benchmark suite, one after the other on this machine.

(a) overhead: Switchyard and LiteLLM's proxy in front of one fast upstream;
(b) engine path: in-process vLLM behind Switchyard vs vLLM's own server;
(c) frontend: CPU per streamed token, the gateway's process vs vllm serve's API server;
(d) workers: requests/s with --workers 2 vs 1;
(e) embeddings: the same as (b) for /v1/embeddings (vLLM's pooling runner);
(f) routing: adapter_affinity vs round_robin on two vLLM replicas;
(g) cache: hit vs miss (memory and Redis).
Each writes its own docs/benchmarks/NAME.{json,md}; this then writes suite.md (every
ratio with its goal) and suite.png. `--only overhead,cache` runs a subset (`--only ''`
none: the summary alone); the summary always reads the latest JSON of each.

    switchyard bench suite [--only a,b] [--quick]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "benchmarks"
SUITE = ("overhead", "engine", "frontend", "workers", "embeddings", "routing", "cache")
QUICK = {"overhead": ["--requests", "150", "--streams", "20", "--seconds-per-level", "1"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(SUITE))
    parser.add_argument("--quick", action="store_true", help="smaller loads (a smoke run)")
    args = parser.parse_args(argv)
    for name in filter(None, args.only.split(",")):
        print(f">>> bench {name}", file=sys.stderr, flush=True)
        module = importlib.import_module(f"gateway.bench.{name}")
        status: int = module.main(QUICK.get(name, []) if args.quick else [])
        if status:
            return status
    rows = summary()
    (OUT / "suite.md").write_text(_markdown(rows))
    _plot(rows, OUT / "suite.png")
    print(_markdown(rows))
    return 0


def summary() -> list[dict[str, Any]]:
    """(benchmark, measure, value, goal, met, when) from the latest JSON of each."""
    rows: list[dict[str, Any]] = []

    def add(bench: str, measure: str, value: float | None, goal: str, met: bool | None) -> None:
        report = _load(bench)
        rows.append(
            {
                "bench": bench,
                "measure": measure,
                "value": value,
                "goal": goal,
                "met": met,
                "when": report.get("when") if report else None,
            }
        )

    overhead = _load("overhead")
    if overhead:
        ours = overhead["results"]["switchyard"]
        peer = overhead["results"].get("litellm", {})
        ratios = list(overhead["ratios"].values()) or [None] * 5
        add(
            "overhead",
            "added p50 ms, concurrency 1",
            ours["added_p50_ms"],
            "≤ 1",
            ours["added_p50_ms"] <= 1,
        )
        add(
            "overhead",
            "added p99 ms, concurrency 1",
            ours["added_p99_ms"],
            "≤ 2",
            ours["added_p99_ms"] <= 2,
        )
        if peer:
            add(
                "overhead",
                "added p99 vs LiteLLM",
                ratios[1],
                "≤ 1/3",
                ratios[1] is not None and ratios[1] <= 1 / 3,
            )
            add(
                "overhead",
                "max req/s (added p99 ≤ 10 ms) vs LiteLLM",
                ratios[2],
                "≥ 10",
                ratios[2] is not None and ratios[2] >= 10,
            )
        levels = overhead["throughput"]["switchyard"]
        kept = round(levels["64"]["rps"] / levels["4"]["rps"], 3)
        add("overhead", "req/s at concurrency 64 / at 4", kept, "≥ 1.0", kept >= 1.0)
        add(
            "overhead",
            "added p99 per chunk µs",
            ours["added_chunk_p99_us"],
            "≤ 200",
            ours["added_chunk_p99_us"] <= 200,
        )
        for measure, key in (
            ("gateway CPU µs per chunk (a burst)", "cpu_us_per_chunk"),
            ("gateway CPU µs per chunk (1 ms apart)", "cpu_us_per_spaced_chunk"),
        ):
            value = ours.get(key)
            add("overhead", measure, value, "≤ 10", value is not None and value <= 10)
    engine = _load("engine")
    if engine:
        value = engine["ratios"]["throughput (ours/vllm, higher is better)"]
        add("engine", "tokens/s vs vllm serve", value, "≥ 1.0", value >= 1.0)
        value = engine["ratios"]["ttft_p50 (ours/vllm, lower is better)"]
        add("engine", "TTFT p50 vs vllm serve", value, "≤ 1.0", value <= 1.0)
    frontend = _load("frontend")
    if frontend:
        value = frontend["ratios"]["frontend CPU per token (ours/vllm, lower is better)"]
        add("frontend", "CPU per streamed token vs vllm serve", value, "≤ 0.9", value <= 0.9)
        floor = frontend["ratios"].get(
            "floor CPU per token (floor/vllm: a gateway that cost nothing)"
        )
        if floor is not None:  # runs before the floor had none
            add("frontend", "the floor (no gateway) vs vllm serve", floor, "—", None)
            own = frontend["gateway_us_per_token"]
            add("frontend", "gateway's own CPU µs per token", own, "—", None)
    workers = _load("workers")
    if workers:
        for mode, summary in workers["ratio_summary"].items():
            value = summary["median"]
            add("workers", f"req/s, 2 workers / 1 ({mode})", value, "≥ 1.8", value >= 1.8)
    embeddings = _load("embeddings")
    if embeddings:
        value = embeddings["ratios"]["requests/s (ours/vllm, higher is better)"]
        add("embeddings", "requests/s vs vllm serve", value, "≥ 1.0", value >= 1.0)
    routing = _load("routing")
    if routing:
        value = routing["ratios"]["throughput (affinity/round_robin, higher is better)"]
        add("routing", "affinity / round_robin throughput", value, "≥ 1.5", value >= 1.5)
    cache = _load("cache")
    if cache:
        for store, goal in cache["goals (hit p99 ms)"].items():
            value = cache["latency_ms"][f"{store} hit"]["p99"]
            add("cache", f"{store} hit p99 ms", value, f"≤ {goal}", value <= goal)
        hit, miss = (
            cache["latency_ms"]["memory hit"]["p50"],
            cache["latency_ms"]["memory miss"]["p50"],
        )
        add("cache", "miss p50 / hit p50", round(miss / hit, 1), "—", None)
    return rows


def _load(name: str) -> dict[str, Any] | None:
    path = OUT / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _markdown(rows: list[dict[str, Any]]) -> str:
    when = datetime.now(UTC).isoformat(timespec="seconds")
    lines = [
        "# Benchmark suite (`make bench`)",
        "",
        f"Summary written {when} from each benchmark's latest JSON (its own run time in the "
        "last column); details in NAME.md beside this file.",
        "",
        "| benchmark | measure | value | goal | met | measured |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        met = {True: "yes", False: "**no**", None: "—"}[r["met"]]
        lines.append(
            f"| {r['bench']} | {r['measure']} | {r['value']} | {r['goal']} | {met} | {r['when']} |"
        )
    return "\n".join([*lines, ""])


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(2.2 * len(rows), 3.6))
    for axis, row in zip(axes if len(rows) > 1 else [axes], rows, strict=True):
        colour = {True: "tab:green", False: "tab:red", None: "tab:grey"}[row["met"]]
        axis.bar([0], [row["value"] or 0], color=colour)
        axis.set_title(f"{row['bench']}\n{row['measure']}", fontsize=7)
        axis.set_xticks([])
        axis.set_xlabel(f"goal {row['goal']}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
