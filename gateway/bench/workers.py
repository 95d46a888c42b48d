"""`make bench-workers`: requests/s through `switchyard serve --workers 2` vs
`--workers 1`, in front of the fast scripted upstream (gateway/bench/upstream.py) on
loopback, same load: non-streamed chat completions of 16 tokens, then streamed ones of
16 chunks, closed loop (aiohttp, `--concurrency` connections). The two gateways take
turns in alternating rounds (A B, B A, ...; at least 3), each measured from a fresh
start after a warm-up, and each round gives its own ratio; the report has every
round, the median and the spread. The gateway runs with its defaults (metrics and
access log on, keys and the cache off, the Responses store off: workers refuse it in
memory). CPU seconds of the gateway (all its processes), the upstream and this load
generator are measured too, and whatever else ran meanwhile ("others"): on a machine
with few cores they share them, and the ratio is what a second worker adds there. The
report also gives the ceiling those measurements set: the requests/s the machine's
cores allow at the CPU each request costs the gateway, the upstream and the client
together, over the median of one worker.

    switchyard bench workers [--requests 3000] [--concurrency 32] [--rounds 5]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.bench.load import REPORTS, alternating
from gateway.bench.overhead import cpu_seconds
from gateway.bench.process import gateway_command, server_process, write_report

MODES = ("whole", "stream")
SIDES = {"1 worker": 1, "2 workers": 2}
BODY = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000, help="per mode, per round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--port", type=int, default=8830)
    parser.add_argument("--out", type=Path, default=REPORTS)
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds: at least 3 (a ratio needs its spread)")
    work = Path(tempfile.mkdtemp(prefix="switchyard-bench-workers-"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    upstream_cmd = [sys.executable, "-m", "gateway.bench.upstream", "--port", str(args.port)]
    url = f"http://127.0.0.1:{args.port + 1}"
    engine = {
        "name": "up",
        "kind": "openai_remote",
        "model_id": "scripted",
        "options": {"url": f"http://127.0.0.1:{args.port}"},
    }
    rounds: list[dict[str, Any]] = [{} for _ in range(args.rounds)]
    probe = _answers(f"http://127.0.0.1:{args.port}")
    with server_process(upstream_cmd, probe, work / "upstream.log", env) as upstream:
        for round_, side in alternating(list(SIDES), args.rounds):
            none = {"backend": "none"}
            command = gateway_command(
                [engine], args.port + 1, work, responses=none, workers=SIDES[side]
            )
            log = work / f"{round_}-{SIDES[side]}.log"
            ready = _all_ready(url, SIDES[side])
            with server_process(command, ready, log, env) as gateway:
                rounds[round_][side] = _measure(url, args, gateway.pid, upstream.pid)
    report = _report(rounds, args)
    write_report(args.out, "workers", report, _markdown(report))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _answers(url: str) -> Callable[[], bool]:
    """A readiness probe: one chat completion succeeds."""
    import httpx

    def probe() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.post(url + "/v1/chat/completions", json=BODY, timeout=5).is_success
        return False

    return probe


def _all_ready(url: str, workers: int) -> Callable[[], bool]:
    """A readiness probe: `workers` different workers answered /ready with 200 (each
    starts its engines on its own), found over fresh connections; with workers, /metrics
    says which one a connection reached (x-switchyard-worker)."""
    import http.client

    port = int(url.rsplit(":", 1)[1])
    ready: set[str] = set()

    def probe() -> bool:
        for _ in range(8 * workers):
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                try:
                    conn.request("GET", "/metrics")
                    answer = conn.getresponse()
                    answer.read()
                    pid = answer.getheader("x-switchyard-worker", "the one")
                    conn.request("GET", "/ready")
                    answer = conn.getresponse()
                    answer.read()
                    if answer.status == 200:
                        ready.add(pid)
                finally:
                    conn.close()
            if len(ready) >= workers:
                return True
        return False

    return probe


def _measure(url: str, args: Any, gateway: int, upstream: int) -> dict[str, Any]:
    """Both modes against one running gateway: requests/s and CPU seconds of each party."""
    warm = asyncio.run(_load(url, 200, args.concurrency, stream=False))
    if warm:
        raise RuntimeError(f"{url} failed its warm-up: {dict(warm)}")
    measured: dict[str, Any] = {}
    for mode in MODES:
        before = {
            "gateway": cpu_seconds(gateway),
            "upstream": cpu_seconds(upstream),
            "client": _own_cpu(),
            "machine": _busy(),
        }
        started = time.perf_counter()
        failed = asyncio.run(_load(url, args.requests, args.concurrency, mode == "stream"))
        failures = sum(failed.values())
        wall = time.perf_counter() - started
        used = {
            "gateway": cpu_seconds(gateway) - before["gateway"],
            "upstream": cpu_seconds(upstream) - before["upstream"],
            "client": _own_cpu() - before["client"],
        }
        # What else ran on the machine meanwhile (other work shares the cores).
        used["others"] = max(0.0, _busy() - before["machine"] - sum(used.values()))
        measured[mode] = {
            "rps": round((args.requests - failures) / wall, 1),
            "failures": failures,
            "failed": dict(failed),
            "wall_s": round(wall, 3),
            "cpu_s": {party: round(s, 2) for party, s in used.items()},
            "gateway_cpu_us_per_request": round(used["gateway"] / args.requests * 1e6, 1),
        }
    return measured


async def _load(url: str, requests: int, concurrency: int, stream: bool) -> Counter[str]:
    """`requests` chat completions, `concurrency` at a time; the failures, by status
    (or error)."""
    import aiohttp

    body = {**BODY, "stream": stream}
    left = requests
    failures: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                try:
                    async with session.post(url + "/v1/chat/completions", json=body) as r:
                        await r.read()
                        if r.status != 200:
                            failures[str(r.status)] += 1
                except aiohttp.ClientError as exc:
                    failures[type(exc).__name__] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failures


def _busy() -> float:
    """CPU seconds the whole machine spent busy since boot."""
    import psutil

    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _report(rounds: list[dict[str, Any]], args: Any) -> dict[str, Any]:
    one, two = SIDES
    ratios = {
        mode: [round(r[two][mode]["rps"] / r[one][mode]["rps"], 3) for r in rounds]
        for mode in MODES
    }
    cpus = os.cpu_count() or 1
    summary = {}
    for mode, values in ratios.items():
        measured = [r[side][mode] for r in rounds for side in SIDES]
        per_request = statistics.median(
            sum(m["cpu_s"][p] for p in ("gateway", "upstream", "client")) / args.requests
            for m in measured
        )
        alone = statistics.median(r[one][mode]["rps"] for r in rounds)
        summary[mode] = {
            "median": round(statistics.median(values), 3),
            "min": min(values),
            "max": max(values),
            "cpu_us_per_request_all_parties": round(per_request * 1e6, 1),
            "ceiling_ratio_on_these_cores": round(cpus / per_request / alone, 3),
        }
    return {
        "benchmark": "worker processes",
        "command": "make bench-workers",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "cpu": _cpu_model()},
        "load": {
            "requests": args.requests,
            "concurrency": args.concurrency,
            "rounds": args.rounds,
            "max_tokens": BODY["max_tokens"],
        },
        "rounds": rounds,
        "ratio_2_to_1": ratios,
        "ratio_summary": summary,
        "goal": ">= 1.8",
    }


def _markdown(report: dict[str, Any]) -> str:
    m, load = report["machine"], report["load"]
    lines = [
        "# Worker processes: `--workers 2` vs `--workers 1`",
        "",
        f"`{report['command']}` on {m['cpus']} CPUs ({m['cpu']}), {report['when']}. "
        f"Load: {load['requests']} chat completions per mode and round, "
        f"{load['concurrency']} at a time, {load['max_tokens']} tokens; "
        f"{load['rounds']} alternating rounds. Upstream: gateway/bench/upstream.py on "
        "loopback, on the same machine as the gateway and the load generator.",
        "",
        "| round | gateway | mode | requests/s | failures | wall s | CPU s gateway "
        "| CPU s upstream | CPU s client | CPU s others | gateway CPU µs/request |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for number, sides in enumerate(report["rounds"], 1):
        for side, modes in sides.items():
            for mode, r in modes.items():
                cpu = r["cpu_s"]
                lines.append(
                    f"| {number} | {side} | {mode} | {r['rps']} | {r['failures']} "
                    f"| {r['wall_s']} | {cpu['gateway']} | {cpu['upstream']} | {cpu['client']} "
                    f"| {cpu['others']} | {r['gateway_cpu_us_per_request']} |"
                )
    lines += [
        "",
        "| mode | ratio per round (2 / 1) | median | spread | CPU µs/request, all parties "
        "| ceiling on these cores |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for mode, values in report["ratio_2_to_1"].items():
        s = report["ratio_summary"][mode]
        lines.append(
            f"| {mode} | {values} | **{s['median']}** | {s['min']} to {s['max']} "
            f"| {s['cpu_us_per_request_all_parties']} | {s['ceiling_ratio_on_these_cores']} |"
        )
    lines += [
        "",
        f"Goal: {report['goal']} (issue 21). The ceiling is the most these cores allow over "
        "one worker, at the CPU a request costs the gateway, the upstream and the load "
        "generator together (all three on this machine); CPU s others is what other "
        "programs took meanwhile.",
        "",
    ]
    return "\n".join(lines)


def _cpu_model() -> str:
    with contextlib.suppress(OSError, StopIteration):
        return next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return ""


if __name__ == "__main__":
    sys.exit(main())
