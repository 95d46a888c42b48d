"""`switchyard bench profile`: where the gateway's CPU goes, per concern.

The overhead benchmark's setup (gateway/bench/upstream.py on loopback, Switchyard in
front of it with its defaults: metrics and access log on, cache and keys off), loaded
by an aiohttp client at a fixed concurrency, while py-spy samples the gateway process:
first whole answers (16 tokens), then streams (64 chunks). Each sample is charged to
the innermost frame that belongs to a concern (routing, body parsing, auth, cache,
balancer, metrics, access log, SSE framing, ASGI sends, the upstream client, ...),
so the table reads as "of the gateway's CPU, this much is spent in ...". With the CPU
time per request and per chunk measured beside it, shares become microseconds.
Writes docs/benchmarks/profile.{json,md}.

    switchyard bench profile [--seconds 20] [--concurrency 4] [--keys]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.bench.engine import machine
from gateway.bench.overhead import BODY, ROOT, _answers, cpu_seconds
from gateway.bench.process import gateway_command, server_process, write_report

PY_SPY = Path(sys.executable).parent / "py-spy"
# (concern, substrings of "file:function"); the first concern matching the innermost
# frame that matches any takes the sample.
CONCERNS: list[tuple[str, tuple[str, ...]]] = [
    ("auth & rate limits", ("gateway/auth/", "middleware/auth.py")),
    (
        "middleware (request id, body limit, errors)",
        (
            "gateway/middleware/",
            "starlette/middleware/",
            "starlette/_exception_handler",
            "starlette/applications",
            "fastapi/applications",
        ),
    ),
    ("routing", ("starlette/routing", "fastapi/routing")),
    (
        "body parsing & validation",
        ("routes/_respond.py:parse", "pydantic", "openai/schemas", "starlette/requests"),
    ),
    ("request conversion", ("openai/convert",)),
    ("response cache", ("gateway/cache/",)),
    ("balancer & retries", ("gateway/balancer/", "gateway/attempts")),
    ("metrics", ("gateway/metrics", "prometheus_client")),
    ("access log", ("observe.py:record", "/logging/")),
    ("SSE framing & rendering", ("openai/sse", "openai/render", "orjson")),
    ("response headers & objects", ("starlette/responses", "starlette/datastructures")),
    ("ASGI server (uvicorn: parse, send)", ("uvicorn/",)),
    ("upstream client (aiohttp, wire)", ("engines/", "aiohttp/", "yarl/", "multidict/")),
    (
        "pipeline & generators",
        (
            "gateway/pipeline",
            "gateway/generation",
            "gateway/resume",
            "gateway/observe",
            "gateway/routes/",
            "gateway/call",
        ),
    ),
    ("event loop & tasks", ("asyncio/", "uvloop", "anyio/", "contextlib")),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20, help="sampled per phase")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--port", type=int, default=8860)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    if not PY_SPY.is_file():
        print(f"py-spy is missing: {sys.executable} -m pip install py-spy", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="switchyard-profile-"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    upstream = [sys.executable, "-m", "gateway.bench.upstream", "--port", str(args.port)]
    engine = {
        "name": "up",
        "kind": "openai_remote",
        "model_id": "scripted",
        "options": {"url": f"http://127.0.0.1:{args.port}"},
    }
    gateway = gateway_command([engine], args.port + 1, work)
    phases = {}
    with (
        server_process(upstream, _answers(args.port), work / "upstream.log", env),
        server_process(gateway, _answers(args.port + 1), work / "gateway.log", env) as proc,
    ):
        for name, body, units in (
            ("whole answers (16 tokens)", BODY, 1),
            ("streams (64 chunks)", {**BODY, "max_tokens": 64, "stream": True}, 64),
        ):
            phases[name] = _phase(proc.pid, args.port + 1, body, units, args, work)
    report = {
        "benchmark": "gateway CPU by concern (py-spy)",
        "command": "switchyard bench profile",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load": {"seconds": args.seconds, "concurrency": args.concurrency, "rate": args.rate},
        "phases": phases,
    }
    write_report(args.out, "profile", report, _markdown(report))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _phase(
    pid: int, port: int, body: dict[str, Any], units: int, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """Sample the gateway under `body` at the set concurrency: shares by concern, the
    top functions by own samples, and the CPU time per request and per unit."""
    raw = work / f"profile-{units}.txt"
    asyncio.run(_load(port, body, args.concurrency, 2.0))  # warm-up
    spy = subprocess.Popen(
        [str(PY_SPY), "record", "--pid", str(pid), "--format", "raw", "--output", str(raw),
         "--rate", str(args.rate), "--duration", str(int(args.seconds)), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)  # py-spy attached
    cpu_before = cpu_seconds(pid)
    done = asyncio.run(_load(port, body, args.concurrency, args.seconds - 1.5))
    cpu = cpu_seconds(pid) - cpu_before
    spy.wait()
    stacks = read_stacks(raw)
    total = sum(stacks.values())
    shares = by_concern(stacks, CONCERNS)
    own = own_samples(stacks)
    per_request_us = cpu / done * 1e6 if done else 0.0
    return {
        "requests": done,
        "cpu_us_per_request": round(per_request_us, 1),
        "cpu_us_per_unit": round(per_request_us / units, 2),
        "samples": total,
        "concerns": {k: round(100 * v / total, 1) for k, v in shares.most_common()},
        "top_functions": [(f, round(100 * v / total, 1)) for f, v in own.most_common(25)],
    }


async def _load(port: int, body: dict[str, Any], concurrency: int, seconds: float) -> int:
    import aiohttp

    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    until = time.perf_counter() + seconds
    done = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < until:
                async with s.post(url, json=body) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"the gateway answered {response.status}")
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def read_stacks(path: Path) -> collections.Counter[tuple[str, ...]]:
    """py-spy's raw (collapsed) output: frames root first, each "function (file:line)",
    as ("path/in/package.py:function", ...)."""
    stacks: collections.Counter[tuple[str, ...]] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        stacks[tuple(_frame(f) for f in stack.split(";") if f)] += int(count)
    return stacks


def _frame(text: str) -> str:
    """ "function (path/to/file.py:12)" as "path/to/file.py:function"."""
    function, _, where = text.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3.11/", f"{ROOT}/"):
        file = file.split(marker, 1)[-1]
    return f"{file}:{function.strip()}"


def by_concern(
    stacks: collections.Counter[tuple[str, ...]], concerns: list[tuple[str, tuple[str, ...]]]
) -> collections.Counter[str]:
    """Samples per concern: each stack goes to the first concern matching its innermost
    frame that matches any ("other" if none does)."""

    def concern(frame: str) -> str | None:
        return next((c for c, needles in concerns if any(n in frame for n in needles)), None)

    shares: collections.Counter[str] = collections.Counter()
    for frames, count in stacks.items():
        shares[next((c for f in reversed(frames) if (c := concern(f))), "other")] += count
    return shares


def own_samples(stacks: collections.Counter[tuple[str, ...]]) -> collections.Counter[str]:
    """Samples per function on top of the stack."""
    own: collections.Counter[str] = collections.Counter()
    for frames, count in stacks.items():
        own[frames[-1] if frames else "?"] += count
    return own


def _markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Where the gateway's CPU goes (py-spy)",
        "",
        f"`{report['command']}` on {m['cpus']} CPUs ({m['cpu']}), {report['when']}. "
        f"Load: {report['load']}; gateway/bench/upstream.py on loopback, Switchyard's "
        "defaults (metrics and access log on, cache and keys off).",
        "",
        "Each sample is charged to the innermost frame that belongs to a concern.",
    ]
    for name, phase in report["phases"].items():
        per = phase["cpu_us_per_request"]
        lines += [
            "",
            f"## {name}",
            "",
            f"{phase['requests']} requests; gateway CPU {per} µs per request, "
            f"{phase['cpu_us_per_unit']} µs per token/chunk; {phase['samples']} samples.",
            "",
            "| concern | share of CPU | µs per request |",
            "| --- | --- | --- |",
        ]
        for concern, share in phase["concerns"].items():
            lines.append(f"| {concern} | {share} % | {round(per * share / 100, 1)} |")
        lines += ["", "| function (own samples) | share |", "| --- | --- |"]
        lines += [f"| `{f}` | {s} % |" for f, s in phase["top_functions"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
