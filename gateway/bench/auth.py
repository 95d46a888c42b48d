"""`make bench-auth`: what API keys and rate limits cost. Requests/s through `switchyard
serve` with the scripted engine (16-token streamed chat completions, no delays, so the
gateway is the bottleneck): auth off, vs a key with RPM and TPM limits (never reached)
kept in memory, vs the same limits in Redis (a real redis-server on loopback), each
with a request's worst case reserved at admission (the default) and without
(`reserve: false`: tokens charged at the end only); same load, rounds alternating.
Goals: <= 10 % cost with Redis; reservations >= 0.95 of charging at the end.

    switchyard bench auth [--requests 1500] [--concurrency 16] [--rounds 2]
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

import httpx

from gateway.auth.keys import digest
from gateway.bench.cache import redis_server
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
KEY = "sy-bench-key"
SIDES = (
    "auth off",
    "memory limits, charged at the end",
    "memory limits, reserved",
    "redis limits, charged at the end",
    "redis limits, reserved",
)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, 8781, requests=1500, concurrency=16, max_tokens=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    load = Load.from_arguments(args)
    work = Path(tempfile.mkdtemp(prefix="switchyard-bench-auth-"))
    url = f"http://127.0.0.1:{args.port}"
    engine = {"name": "s", "kind": "scripted", "model_id": "scripted", "options": {"reply": REPLY}}
    limited = {
        "label": "bench",
        "key_sha256": digest(KEY),
        "models": ["*"],
        "rpm": 10**9,
        "tpm": 10**12,
    }
    samples: dict[str, list[Sample]] = {side: [] for side in SIDES}
    with redis_server(work) as redis_url:
        settings: dict[str, dict[str, Any]] = {"auth off": {"auth": {"enabled": False}}}
        for store in ("memory", "redis"):
            for reserve, how in ((False, "charged at the end"), (True, "reserved")):
                limits = {"backend": store, "redis_url": redis_url, "reserve": reserve}
                side = f"{store} limits, {how}"
                settings[side] = {"auth": {"keys": [limited], "rate_limit": limits}}
        for round_, side in alternating(list(SIDES), args.rounds):
            command = gateway_command([engine], args.port, work, access_log=False, **settings[side])
            log = work / f"{round_}-{side.replace(' ', '-')}.log"
            headers = {"Authorization": f"Bearer {KEY}"}
            with server_process(command, answers(url, "scripted", headers), log, dict(os.environ)):
                samples[side].append(asyncio.run(run(url, "scripted", load, headers)))
    results = {side: summarize(s) for side, s in samples.items()}
    rps = {side: r.requests / r.wall_s for side, r in results.items()}
    ratios = {side: round(rps[side] / rps["auth off"], 3) for side in SIDES[1:]}
    reserving = {
        store: round(
            rps[f"{store} limits, reserved"] / rps[f"{store} limits, charged at the end"], 3
        )
        for store in ("memory", "redis")
    }
    report: dict[str, Any] = {
        "benchmark": "auth and rate limit cost",
        "command": "make bench-auth",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load": {**dataclasses.asdict(load), "rounds": args.rounds},
        "requests_per_s": {side: round(v, 1) for side, v in rps.items()},
        "results": {side: r.row() for side, r in results.items()},
        "ratio to auth off (goal >= 0.90 with redis)": ratios,
        "reserved / charged at the end (goal >= 0.95)": reserving,
    }
    lines = [
        "# What API keys and rate limits cost",
        "",
        f"`{report['command']}`, {report['when']}, {report['cpus']} CPUs, load "
        f"{report['load']}; `switchyard serve` with the scripted engine (16-token streams).",
        "",
        "| gateway | requests/s | ratio to auth off | TTFT p50 ms | TTFT p99 ms | failures |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {side} | {rps[side]:.1f} | {ratios.get(side, 1.0)} | {r.ttft_p50_ms} "
            f"| {r.ttft_p99_ms} | {r.failures} |"
            for side, r in results.items()
        ),
        "",
        f"- with Redis limits (reserved): **{ratios['redis limits, reserved']}** of auth off "
        "(goal ≥ 0.90)",
        f"- reserving the worst case vs charging at the end: memory **{reserving['memory']}**, "
        f"Redis **{reserving['redis']}** (goal ≥ 0.95)",
        "",
    ]
    write_report(args.out, "auth", report, "\n".join(lines))
    return 0


def _check_limiter(url: str, headers: dict[str, str], limited: bool) -> None:
    """The limits really were applied, and the limiter's store never failed."""
    body = {"model": "scripted", "prompt": "hi", "max_tokens": 1}
    r = httpx.post(url + "/v1/completions", json=body, headers=headers)
    assert ("x-ratelimit-remaining-requests" in r.headers) == limited, r.headers
    errors = "switchyard_rate_limit_errors_total 0.0"
    assert not limited or errors in httpx.get(url + "/metrics").text


if __name__ == "__main__":
    sys.exit(main())
