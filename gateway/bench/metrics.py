"""`make bench-metrics`: what the metrics cost. Requests/s through `switchyard serve`
with the scripted engine (16-token streamed chat completions, no delays, so the
gateway is the bottleneck), metrics and access log on vs off, same load, rounds
alternating (A B B A). Goal: <= 5 % difference.

    switchyard bench metrics [--requests 1500] [--concurrency 16] [--rounds 4]
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.bench.load import (
    SIXTEEN_TOKENS,
    Load,
    Sample,
    alternating,
    bench_parser,
    run,
    summarize,
)
from gateway.bench.process import answers, gateway_command, server_process, write_report

REPLY = SIXTEEN_TOKENS
SIDES = {"metrics on": True, "metrics off": False}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, 8780, requests=1500, concurrency=16, max_tokens=16)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    load = Load.from_arguments(args)
    work = Path(tempfile.mkdtemp(prefix="switchyard-bench-metrics-"))
    url = f"http://127.0.0.1:{args.port}"
    engine = {"name": "s", "kind": "scripted", "model_id": "scripted", "options": {"reply": REPLY}}
    samples: dict[str, list[Sample]] = {side: [] for side in SIDES}
    for round_, side in alternating(list(SIDES), args.rounds):
        on = SIDES[side]
        command = gateway_command([engine], args.port, work, metrics=on, access_log=on)
        log = work / f"{round_}-{side.replace(' ', '-')}.log"
        with server_process(command, answers(url, "scripted"), log, dict(os.environ)):
            samples[side].append(asyncio.run(run(url, "scripted", load)))
    results = {side: summarize(s) for side, s in samples.items()}
    rps = {side: r.requests / r.wall_s for side, r in results.items()}
    ratio = round(rps["metrics on"] / rps["metrics off"], 3)
    report: dict[str, Any] = {
        "benchmark": "metrics cost",
        "command": "make bench-metrics",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load": {**dataclasses.asdict(load), "rounds": args.rounds},
        "requests_per_s": {side: round(v, 1) for side, v in rps.items()},
        "results": {side: r.row() for side, r in results.items()},
        "ratio (on/off requests/s, goal >= 0.95)": ratio,
    }
    lines = [
        "# What the metrics cost",
        "",
        f"`{report['command']}`, {report['when']}, {report['cpus']} CPUs, load "
        f"{report['load']}; `switchyard serve` with the scripted engine (16-token streams).",
        "",
        "| gateway | requests/s | TTFT p50 ms | TTFT p99 ms | failures |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {side} | {rps[side]:.1f} | {r.ttft_p50_ms} | {r.ttft_p99_ms} | {r.failures} |"
            for side, r in results.items()
        ),
        "",
        f"- requests/s, on / off: **{ratio}** (goal ≥ 0.95)",
        "",
    ]
    write_report(args.out, "metrics", report, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
