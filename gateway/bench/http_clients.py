"""`switchyard bench http-clients`: httpx vs aiohttp as the remote engines' client.

Both stream the same chat completions (16 tokens each) from the same upstream — a
`switchyard serve` process with the scripted engine, so the upstream is fast and
identical for both — at the same concurrency, alternating rounds (A B B A). Reported
per client: requests/s, and the client's own CPU time per request and per streamed
event (`time.process_time()` of this process, which runs nothing else), the cost a
gateway pays for every relayed request.

    switchyard bench http-clients [--requests 2000] [--concurrency 64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from gateway.bench.engine import ROOT
from gateway.bench.load import SIXTEEN_TOKENS, alternating
from gateway.bench.process import gateway_command, server_process, write_report

BODY = {
    "model": "scripted",
    "messages": [{"role": "user", "content": "hi"}],
    "stream": True,
    "stream_options": {"include_usage": True},
}
REPLY = SIXTEEN_TOKENS

Client = Callable[[str, int, int], Coroutine[Any, Any, int]]


async def with_httpx(url: str, requests: int, concurrency: int) -> int:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    events = 0
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one() -> None:
            nonlocal events
            async with client.stream("POST", url, json=BODY) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data:"):
                        events += 1

        await _run(one, requests, concurrency)
    return events


async def with_aiohttp(url: str, requests: int, concurrency: int) -> int:
    connector = aiohttp.TCPConnector(limit=concurrency)
    events = 0
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            nonlocal events
            async with session.post(url, json=BODY) as r:
                async for line in r.content:
                    if line.startswith(b"data:"):
                        events += 1

        await _run(one, requests, concurrency)
    return events


async def _run(one: Callable[[], Awaitable[None]], requests: int, concurrency: int) -> None:
    remaining = list(range(requests))

    async def worker() -> None:
        while remaining:
            remaining.pop()
            await one()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--port", type=int, default=8770)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="switchyard-bench-http-"))
    engine = {"name": "s", "kind": "scripted", "model_id": "scripted", "options": {"reply": REPLY}}
    base = f"http://127.0.0.1:{args.port}"
    clients: dict[str, Client] = {"httpx": with_httpx, "aiohttp": with_aiohttp}
    totals: dict[str, dict[str, float]] = {
        name: {"wall_s": 0.0, "cpu_s": 0.0, "requests": 0, "events": 0} for name in clients
    }

    def ready() -> bool:
        try:
            return httpx.get(base + "/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    command = gateway_command([engine], args.port, work)
    with server_process(command, ready, work / "upstream.log", dict(os.environ)):
        url = base + "/v1/chat/completions"
        for client in clients.values():  # warm-up
            asyncio.run(client(url, 50, 8))
        for _, name in alternating(list(clients), args.rounds):
            wall, cpu = time.perf_counter(), time.process_time()
            events = asyncio.run(clients[name](url, args.requests, args.concurrency))
            totals[name]["wall_s"] += time.perf_counter() - wall
            totals[name]["cpu_s"] += time.process_time() - cpu
            totals[name]["requests"] += args.requests
            totals[name]["events"] += events
    results = {
        name: {
            "requests_per_s": round(t["requests"] / t["wall_s"], 1),
            "client_cpu_us_per_request": round(t["cpu_s"] / t["requests"] * 1e6, 1),
            "client_cpu_us_per_event": round(t["cpu_s"] / t["events"] * 1e6, 2),
        }
        for name, t in totals.items()
    }
    h, a = results["httpx"], results["aiohttp"]
    report: dict[str, Any] = {
        "benchmark": "http clients",
        "command": "switchyard bench http-clients",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load": {"requests": args.requests, "concurrency": args.concurrency, "rounds": args.rounds},
        "results": results,
        "ratios": {
            "cpu per request (aiohttp/httpx, lower is better)": round(
                a["client_cpu_us_per_request"] / h["client_cpu_us_per_request"], 3
            ),
            "requests/s (aiohttp/httpx)": round(a["requests_per_s"] / h["requests_per_s"], 3),
        },
    }
    lines = [
        "# HTTP client for remote engines: httpx vs aiohttp",
        "",
        f"`{report['command']}`, {report['when']}, {report['cpus']} CPUs, "
        f"load {report['load']}; upstream: `switchyard serve` with the scripted engine "
        "(16-token streamed chat completions).",
        "",
        "| client | requests/s | client CPU µs/request | client CPU µs/event |",
        "| --- | --- | --- | --- |",
        *(
            f"| {n} | {r['requests_per_s']} | {r['client_cpu_us_per_request']} | "
            f"{r['client_cpu_us_per_event']} |"
            for n, r in results.items()
        ),
        "",
        *(f"- {k}: **{v}**" for k, v in report["ratios"].items()),
        "",
    ]
    write_report(args.out, "http_clients", report, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
