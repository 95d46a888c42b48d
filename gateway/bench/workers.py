"""`make bench-workers`: requests/s through `switchyard serve --workers 2` vs
`--workers 1`, same load: non-streamed chat completions of 16 tokens, then streamed
ones of 16 chunks, closed loop (`--concurrency` connections). The two gateways take
turns in alternating rounds (A B, B A, ...; at least 3), each measured from a fresh
start after a warm-up, and each round gives its own ratio; the report has every
round, the median and the spread. The gateway runs with its defaults (metrics and
access log on, keys and the cache off, the Responses store off: workers refuse it in
memory).

On this machine the gateway shares its cores with the upstream and the load
generator, so both are native programs that cost little beside it: the upstream is
nginx sending back, as they are, the bodies the scripted upstream
(gateway/bench/upstream.py) answers, and the load comes from wrk. CPU seconds of the
gateway (all its processes), nginx and wrk are measured, and whatever else ran
meanwhile ("others"). The report also gives the ceiling those measurements set: the
requests/s the machine's cores allow at the CPU each request costs the three
together, over the median of one worker.

    switchyard bench workers [--seconds 4] [--concurrency 32] [--rounds 5]
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from gateway.bench import wrk
from gateway.bench.load import REPORTS, alternating
from gateway.bench.overhead import cpu_seconds
from gateway.bench.process import gateway_command, server_process, write_report
from gateway.bench.upstream import models, recorded

MODES = ("whole", "stream")
SIDES = {"1 worker": 1, "2 workers": 2}
TOKENS = 16


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=4, help="per mode, per round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--port", type=int, default=8830)
    parser.add_argument("--out", type=Path, default=REPORTS)
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds: at least 3 (a ratio needs its spread)")
    missing = [tool for tool in ("wrk", "nginx") if shutil.which(tool) is None]
    if missing:
        print(
            f"{' and '.join(missing)} missing: `make bench-workers` installs them "
            "(scripts/system-deps.sh wrk=wrk nginx=nginx-light).",
            file=sys.stderr,
        )
        return 2
    work = Path(tempfile.mkdtemp(prefix="switchyard-bench-workers-"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    url = f"http://127.0.0.1:{args.port + 1}"
    engines = [
        {
            "name": mode,
            "kind": "openai_remote",
            "model_id": mode,
            "options": {"url": f"http://127.0.0.1:{args.port}/{mode}"},
        }
        for mode in MODES
    ]
    rounds: list[dict[str, Any]] = [{} for _ in range(args.rounds)]
    upstream = _nginx(work, args.port)
    with server_process(upstream, _answers(args.port), work / "nginx.log", env) as nginx:
        for round_, side in alternating(list(SIDES), args.rounds):
            none = {"backend": "none"}
            command = gateway_command(
                engines, args.port + 1, work, responses=none, workers=SIDES[side]
            )
            log = work / f"{round_}-{SIDES[side]}.log"
            ready = _all_ready(url, SIDES[side])
            with server_process(command, ready, log, env) as gateway:
                rounds[round_][side] = _measure(url, args, gateway.pid, nginx.pid)
    report = _report(rounds, args)
    write_report(args.out, "workers", report, _markdown(report))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _nginx(work: Path, port: int) -> list[str]:
    """nginx on `port` answering what the scripted upstream would, from memory: under
    /whole a chat completion, under /stream its SSE events, and the model list and
    health."""
    bodies = {mode: recorded(mode == "stream", TOKENS) for mode in MODES}
    types = {"whole": "application/json", "stream": "text/event-stream"}
    locations = "".join(
        f"    location = /{mode}/v1/chat/completions {{ default_type {types[mode]}; "
        f"return 200 {_quoted(bodies[mode])}; }}\n"
        for mode in MODES
    )
    listing = _quoted(orjson.dumps(models()))
    temp = work / "nginx-temp"
    config = work / "nginx.conf"
    config.write_text(
        f"worker_processes 1;\ndaemon off;\npid {work / 'nginx.pid'};\n"
        "events { worker_connections 4096; }\n"
        "http {\n  access_log off;\n  keepalive_requests 100000000;\n"
        f"  client_body_temp_path {temp}; proxy_temp_path {temp};\n"
        f"  fastcgi_temp_path {temp}; uwsgi_temp_path {temp}; scgi_temp_path {temp};\n"
        f"  server {{\n    listen 127.0.0.1:{port};\n{locations}"
        f"    location ~ /v1/models$ {{ default_type application/json; return 200 {listing}; }}\n"
        "    location ~ /health$ { return 200; }\n  }\n}\n"
    )
    return ["nginx", "-c", str(config), "-p", str(work), "-e", str(work / "nginx-error.log")]


def _quoted(body: bytes) -> str:
    """`body` as an nginx string: single-quoted, its newlines escaped; nothing it
    holds may read as a variable."""
    text = body.decode()
    if any(c in text for c in "'$\\"):
        raise ValueError("an nginx string here holds no quote, $ or backslash")
    return "'" + text.replace("\n", "\\n") + "'"


def _answers(port: int) -> Callable[[], bool]:
    """A readiness probe: the whole answer comes back."""
    import httpx

    def probe() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            url = f"http://127.0.0.1:{port}/whole/v1/chat/completions"
            return httpx.post(url, json=_body("whole"), timeout=5).is_success
        return False

    return probe


def _body(mode: str) -> dict[str, Any]:
    messages = [{"role": "user", "content": "hi"}]
    return {"model": mode, "messages": messages, "max_tokens": TOKENS, "stream": mode == "stream"}


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
    chat = url + "/v1/chat/completions"
    wrk.run(chat, _body("whole"), 1, args.concurrency)  # warm-up
    measured: dict[str, Any] = {}
    for mode in MODES:
        before = {"gateway": cpu_seconds(gateway), "upstream": cpu_seconds(upstream)}
        machine = _busy()
        result = wrk.run(chat, _body(mode), args.seconds, args.concurrency)
        used = {
            "gateway": cpu_seconds(gateway) - before["gateway"],
            "upstream": cpu_seconds(upstream) - before["upstream"],
            "client": result["cpu_s"],
        }
        # What else ran on the machine meanwhile (other work shares the cores).
        used["others"] = max(0.0, _busy() - machine - sum(used.values()))
        measured[mode] = {
            "rps": result["rps"],
            "requests": result["requests"],
            "failures": result["failures"],
            "wall_s": result["wall_s"],
            "cpu_s": {party: round(s, 2) for party, s in used.items()},
            "gateway_cpu_us_per_request": round(used["gateway"] / result["requests"] * 1e6, 1),
        }
    return measured


def _busy() -> float:
    """CPU seconds the whole machine spent busy since boot."""
    import psutil

    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


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
            sum(m["cpu_s"][p] for p in ("gateway", "upstream", "client")) / m["requests"]
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
            "seconds": args.seconds,
            "concurrency": args.concurrency,
            "rounds": args.rounds,
            "max_tokens": TOKENS,
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
        f"Load: wrk, {load['seconds']} s of chat completions per mode and round, "
        f"{load['concurrency']} at a time, {load['max_tokens']} tokens; "
        f"{load['rounds']} alternating rounds. Upstream: nginx sending back the scripted "
        "upstream's answers (gateway/bench/upstream.py) on loopback, on the same machine "
        "as the gateway and wrk.",
        "",
        "| round | gateway | mode | requests/s | failures | wall s | CPU s gateway "
        "| CPU s nginx | CPU s wrk | CPU s others | gateway CPU µs/request |",
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
        "one worker, at the CPU a request costs the gateway, nginx and wrk together (all "
        "three on this machine); CPU s others is what other programs took meanwhile.",
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
