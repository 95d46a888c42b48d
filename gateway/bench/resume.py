"""`make bench-resume`: streams that lose their replica, with resume on and off.

Two `vllm serve` replicas of the demo model (one core each) behind a `switchyard
serve` gateway; a steady load of streamed greedy requests (chat and completions,
`--concurrency` at once) runs for `--duration` seconds while, every `--kill-every`
seconds, the replica streaming the most answers is killed (`kill -9`) and started
again (the next kill waits for it: one replica is always up). The same seeded load and kill
schedule runs twice: with resume on (the default) and with `resume: false`.

Measured on the client: the share of streams that completed without an error event
(goal: 100 % with resume), and of the streams cut by a kill: the gap between the
last text before the kill and the first after it (p50, p99; side by side with the
inter-chunk gap of uncut streams), and the share whose text is byte-identical to an
uninterrupted answer of the same request (the reference, taken before the kills).

    switchyard bench resume [--duration 300] [--kill-every 20] [--concurrency 8] [--dtype D]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from gateway.bench.engine import MODEL_ID, ROOT, machine
from gateway.bench.load import percentile
from gateway.bench.process import (
    Replica,
    answers,
    gateway_command,
    server_process,
    vllm_server_command,
)
from gateway.bench.process import write_report as write

PROMPTS = [
    "Tell me about the sea in a few lines.",
    "Describe a busy market in the morning.",
    "Explain how a bicycle works.",
    "Write a short poem about winter.",
    "What makes a good friend?",
    "Describe the life of a lighthouse keeper.",
    "How do bees make honey?",
    "Tell a short story about a lost key.",
]
PROBE = {"probe_interval_s": 0.5, "probe_timeout_s": 1.0, "unhealthy_after": 2, "ejection_s": 2}
TIMEOUTS = {"connect_timeout_s": 2, "first_token_timeout_s": 30, "idle_timeout_s": 5}


@dataclass
class Stream:
    """One streamed request as its client saw it."""

    key: tuple[str, str]  # (path, prompt)
    backend: str = ""
    started: float = 0.0
    ended: float = 0.0
    chunks: list[float] = field(default_factory=list)  # when each text chunk came
    text: str = ""
    error: str = ""


def body(path: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    out: dict[str, Any] = {"model": MODEL_ID, "max_tokens": max_tokens, "temperature": 0}
    out["stream"] = True
    if path == "/v1/chat/completions":
        out["messages"] = [{"role": "user", "content": prompt}]
    else:
        out["prompt"] = prompt
    return out


async def one(
    client: httpx.AsyncClient, key: tuple[str, str], max_tokens: int, into: list[Stream]
) -> Stream:
    """One stream, in `into` from its start (the killer looks for live ones)."""
    seen = Stream(key, started=time.monotonic())
    into.append(seen)
    path, prompt = key
    async with client.stream("POST", path, json=body(path, prompt, max_tokens)) as r:
        seen.backend = r.headers.get("x-switchyard-backend", "")
        if r.status_code != 200:
            seen.error = (await r.aread()).decode()[:300]
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = orjson.loads(line[6:])
            if "error" in event:
                seen.error = str(event["error"].get("message"))[:300]
                continue
            for choice in event["choices"]:
                piece = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                if piece:
                    seen.text += piece
                    seen.chunks.append(time.monotonic())
    seen.ended = time.monotonic()
    return seen


async def phase(
    url: str, replicas: list[Replica], keys: list[tuple[str, str]], args: argparse.Namespace
) -> tuple[list[Stream], list[tuple[float, str]], list[float]]:
    """The load for `args.duration` seconds; every `args.kill_every` seconds (or once
    the last victim is back, if later) the replica streaming the most text is killed."""
    streams: list[Stream] = []
    kills: list[tuple[float, str]] = []
    restarts: list[float] = []
    rng = random.Random(args.seed)
    start = time.monotonic()
    end = start + args.duration
    async with httpx.AsyncClient(base_url=url, timeout=180) as client:

        async def worker() -> None:
            while time.monotonic() < end:
                await one(client, rng.choice(keys), args.max_tokens, streams)

        async def killer() -> None:
            due = start + args.kill_every / 2
            while due < end - 10:
                await asyncio.sleep(due - time.monotonic())
                busy = {r.name: 0 for r in replicas}
                for s in streams:
                    if not s.ended and s.chunks:
                        busy[s.backend] = busy.get(s.backend, 0) + 1
                victim = max(replicas, key=lambda r: busy[r.name])
                victim.kill()
                killed = time.monotonic()
                kills.append((killed, victim.name))
                victim.start()
                await asyncio.to_thread(_wait_ready, victim)
                restarts.append(time.monotonic() - killed)
                due = max(due + args.kill_every, time.monotonic() + 1)

        workers = [asyncio.create_task(worker()) for _ in range(args.concurrency)]
        await asyncio.gather(killer(), *workers)
    return streams, kills, restarts


def analyse(
    streams: list[Stream], kills: list[tuple[float, str]], references: dict[tuple[str, str], str]
) -> dict[str, Any]:
    cut, gaps = [], []
    for s in streams:
        hit = [t for t, name in kills if name == s.backend and s.started < t < s.ended]
        before = [c for c in s.chunks if hit and c < hit[0]]
        after = [c for c in s.chunks if hit and c > hit[0]]
        if hit and before and (after or s.error):
            cut.append(s)
            if after:
                gaps.append(after[0] - before[-1])
    steady = [
        b - a for s in streams if s not in cut for a, b in zip(s.chunks, s.chunks[1:], strict=False)
    ]
    completed = [s for s in streams if not s.error]
    identical = [s for s in cut if not s.error and s.text == references[s.key]]
    uncut = [s for s in completed if s not in cut]
    uncut_identical = [s for s in uncut if s.text == references[s.key]]
    return {
        "streams": len(streams),
        "kills": len(kills),
        "cut_streams": len(cut),
        "completed_share": round(len(completed) / max(len(streams), 1), 4),
        "cut_completed_share": round(sum(not s.error for s in cut) / max(len(cut), 1), 4),
        "identical_share": round(len(identical) / max(len(cut), 1), 4),
        "uncut_identical_share": round(len(uncut_identical) / max(len(uncut), 1), 4),
        "gap_p50_ms": round(percentile(gaps, 0.5) * 1000, 1) if gaps else None,
        "gap_p99_ms": round(percentile(gaps, 0.99) * 1000, 1) if gaps else None,
        "chunk_gap_p50_ms": round(percentile(steady, 0.5) * 1000, 1) if steady else None,
        "errors": sorted({s.error[:160] for s in streams if s.error})[:5],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(ROOT / "models" / MODEL_ID))
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--kill-every", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--dtype",
        default="float32",
        help="the replicas' dtype; in bfloat16 a prefill's logits differ from the decode's "
        "(and a batch's from another's), so greedy answers part on near ties",
    )
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--port", type=int, default=8780)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="switchyard-bench-resume-"))
    keys = [(path, p) for p in PROMPTS for path in ("/v1/chat/completions", "/v1/completions")]
    replicas = []
    for i in range(2):
        flags = ["--max-model-len", "1024", "--disable-log-stats"]
        flags += ["--dtype", args.dtype] if args.dtype else []
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": str(i)}
        command = vllm_server_command(args.model, MODEL_ID, args.port + 1 + i, *flags)
        replicas.append(Replica(f"r{i}", args.port + 1 + i, command, env, work / f"r{i}.log"))
    results: dict[str, Any] = {}
    try:
        for replica in replicas:
            print(f">>> starting replica {replica.name} on {replica.url}", file=sys.stderr)
            replica.start()
        for replica in replicas:
            _wait_ready(replica)
        for mode in ("resume", "no_resume"):
            engines = [
                {"name": r.name, "kind": "openai_remote", "model_id": MODEL_ID,
                 "options": {"url": r.url, **TIMEOUTS}}
                for r in replicas
            ]  # fmt: skip
            balancer = {"policy": "least_outstanding", "resume": mode == "resume", **PROBE}
            command = gateway_command(engines, args.port, work, balancer=balancer)
            url = f"http://127.0.0.1:{args.port}"
            ready = answers(url, MODEL_ID)
            with server_process(command, ready, work / f"gateway-{mode}.log", dict(os.environ)):
                if not results:
                    print(">>> references: every request once, uninterrupted", file=sys.stderr)
                    references = asyncio.run(_references(url, keys, args.max_tokens))
                print(f">>> {mode}: {args.duration:.0f} s of load, kills", file=sys.stderr)
                streams, kills, restarts = asyncio.run(phase(url, replicas, keys, args))
                results[mode] = analyse(streams, kills, references)
                results[mode]["restart_s_p50"] = (
                    round(percentile(restarts, 0.5), 1) if restarts else None
                )
    finally:
        for replica in replicas:
            replica.kill()
    on, off = results["resume"], results["no_resume"]
    report = {
        "benchmark": "resume",
        "command": "make bench-resume",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load": {k: v for k, v in vars(args).items() if k not in ("out", "model", "port")},
        **{k: on[k] for k in ("streams", "completed_share", "identical_share")},
        "gap_p50_ms": on["gap_p50_ms"],
        "gap_p99_ms": on["gap_p99_ms"],
        "results": results,
        "ratios": {
            "completed share (resume / no resume)": round(
                on["completed_share"] / max(off["completed_share"], 1e-9), 3
            ),
            "gap p50 / chunk gap p50 (resume)": round(
                (on["gap_p50_ms"] or 0) / max(on["chunk_gap_p50_ms"] or 1, 1e-9), 1
            ),
        },
    }
    stem = "resume" if args.dtype == "float32" else f"resume-{args.dtype}"
    write(args.out, stem, report, _markdown(report))
    return 0


def _wait_ready(replica: Replica, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not replica.healthy():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{replica.name} did not start: see {replica.log}")
        time.sleep(0.5)


async def _references(url: str, keys: list[tuple[str, str]], max_tokens: int) -> dict[Any, str]:
    async with httpx.AsyncClient(base_url=url, timeout=180) as client:
        out = {}
        for key in keys:
            seen = await one(client, key, max_tokens, [])
            if seen.error:
                raise RuntimeError(f"reference {key} failed: {seen.error}")
            out[key] = seen.text
        return out


def _markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    rows = ["| | resume on | resume off |", "| --- | --- | --- |"]
    on, off = report["results"]["resume"], report["results"]["no_resume"]
    for name in ("streams", "kills", "cut_streams", "completed_share", "cut_completed_share",
                 "identical_share", "uncut_identical_share", "gap_p50_ms", "gap_p99_ms",
                 "chunk_gap_p50_ms", "restart_s_p50"):  # fmt: skip
        rows.append(f"| {name} | {on[name]} | {off[name]} |")
    lines = [
        "# Resume: streams that lose their replica",
        "",
        f"`{report['command']}` on {m['cpus']} CPUs ({m['cpu']}), vLLM {m['vllm']}, "
        f"{report['when']}. Two `vllm serve` replicas of the demo model (one core each), "
        "streamed greedy chat and completions; the replica streaming the most answers "
        "killed with `kill -9` and restarted, one at a time. Same seeded load and kill "
        "schedule with resume on and off.",
        f"Load: {report['load']}",
        "",
        *rows,
        "",
        *(f"- {k}: **{v}**" for k, v in report["ratios"].items()),
        "",
        "`identical_share`: of the cut streams, those whose text is byte-identical to an "
        "uninterrupted answer of the same request (`uncut_identical_share`: the same for "
        "the streams no kill cut, the control). `gap`: from the last text before the "
        "kill to the first after it; `chunk_gap`: between two chunks of an uncut stream.",
        "",
    ]
    for mode, seen in (("on", on), ("off", off)):
        if seen["errors"]:
            lines += [f"Errors seen (resume {mode}):", "", *(f"- {e}" for e in seen["errors"]), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
