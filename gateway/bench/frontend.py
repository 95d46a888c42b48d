"""`make bench-frontend`: CPU per streamed token in the process that serves HTTP, the
gateway with its in-process vLLM vs `vllm serve`'s API server.

Both servers are `switchyard bench engine`'s (same model, engine settings, chat
template). In both, vLLM's engine (the EngineCore process and its model worker)
runs in child processes doing the same work; what differs is the frontend process:
HTTP, the chat template, vLLM's output processing and detokenization, the OpenAI
chunks, SSE, and in the gateway also its middleware, balancer, cache lookup and
metrics. That process's own CPU time (user + system, children excluded, from /proc) is
read before and after a load and divided by the output tokens; the engine processes'
is reported beside it (on CPU the engine core polls: its figure follows the wall time).

The load is vLLM's own `vllm bench serve` (run in this process): random prompts of
`--input-len` tokens, `--output-len` output tokens each with `ignore_eos`, so every
answer is exactly that long, checked on both (completion tokens = prompts times
output length), streamed through /v1/chat/completions at `--concurrency`. Each server
serves a warm-up load first. Over `--rounds` (3 by default) the order alternates (A B, B A,
A B) and each round's figures are kept: the ratio is the pooled CPU per token, ours
over vLLM's, with each round's ratio beside it (the spread).

A third server takes its turns beside them, the floor (gateway/bench/floor.py): the
same engine and chunk path, the gateway's SSE rendering, on a bare ASGI app, with no
gateway around it. Its ratio to `vllm serve` is the best a gateway that cost nothing
would reach; ours minus the floor is the gateway's own CPU per token.

`--profile` adds one load per server (three times `--prompts`), after its first measured
one, sampled by py-spy (`--gil`: the thread that runs Python; not measured, the sampler
takes a core of its own), and writes where each frontend's time goes, by concern and by
function. A thread preempted while it holds the GIL still counts, so on a busy machine
the share of uvicorn's `send` (whose write() wakes the client) is wall time more than
CPU. Writes docs/benchmarks/frontend.{json,md}.

    switchyard bench frontend [--prompts 96] [--concurrency 16] [--input-len 256]
                              [--output-len 64] [--rounds 3] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.bench.engine import ENV, MODEL_ID, OURS, THEIRS, contenders, engine_options, machine
from gateway.bench.process import answers, serve_in_turns, write_report
from gateway.bench.profile import PY_SPY, by_concern, own_samples, read_stacks

ROOT = Path(__file__).resolve().parents[2]
FLOOR = "floor (vLLM's serving + SSE on bare uvicorn)"
RATIO = "frontend CPU per token (ours/vllm, lower is better)"
FLOOR_RATIO = "floor CPU per token (floor/vllm: a gateway that cost nothing)"
NOTES = "<!-- notes: kept when the benchmark rewrites this file -->"
# (concern, substrings of "file:function"): a sample goes to the first concern that
# matches the innermost frame matching any concern.
CONCERNS: list[tuple[str, tuple[str, ...]]] = [
    ("vLLM: prompt rendering & tokenization", ("vllm/renderers/", "jinja2/", "transformers/")),
    (
        "vLLM: output processing & detokenization",
        (
            "vllm/v1/engine/output_processor",
            "vllm/v1/engine/detokenizer",
            "vllm/v1/engine/logprobs",
            "tokenizers/",
        ),
    ),
    (
        "vLLM: engine-core client (ZMQ, msgpack)",
        ("vllm/v1/engine/core_client", "vllm/v1/serial_utils", "zmq/", "msgspec"),
    ),
    (
        "vLLM: AsyncLLM (requests in, outputs out)",
        ("vllm/v1/engine/", "vllm/sampling_params", "vllm/v1/metrics/"),
    ),
    (
        "vLLM: OpenAI serving (requests, parsers, pydantic chunks)",
        ("vllm/entrypoints/", "vllm/parser/", "vllm/tool_parsers/", "vllm/reasoning/"),
    ),
    ("engine (engines/: vLLM's outputs as chunks)", ("engines/",)),
    ("metrics (gateway/metrics.py, prometheus_client)", ("gateway/metrics", "prometheus_client")),
    ("gateway: OpenAI rendering & SSE", ("gateway/openai/",)),
    ("gateway: middleware", ("gateway/middleware/",)),
    ("gateway: resume transcript", ("gateway/resume",)),
    ("gateway: pipeline, routes, observe, balancer", ("gateway/",)),
    ("HTTP: FastAPI & Starlette", ("fastapi/", "starlette/")),
    ("HTTP: uvicorn", ("uvicorn/", "h11/", "httptools/")),
    ("pydantic", ("pydantic",)),
    ("event loop & tasks", ("asyncio/", "uvloop/", "anyio/")),
]


@dataclass(frozen=True, slots=True)
class Run:
    """One measured load on one server."""

    completed: int
    failed: int
    output_tokens: int
    frontend_cpu_s: float
    engine_cpu_s: float
    wall_s: float
    ttft_p50_ms: float

    @property
    def frontend_us_per_token(self) -> float:
        return round(self.frontend_cpu_s / self.output_tokens * 1e6, 1)

    @property
    def engine_us_per_token(self) -> float:
        return round(self.engine_cpu_s / self.output_tokens * 1e6, 1)

    def row(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "frontend_us_per_token": self.frontend_us_per_token,
            "engine_us_per_token": self.engine_us_per_token,
            "tokens_per_s": round(self.output_tokens / self.wall_s, 2),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(ROOT / "models" / MODEL_ID))
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="py-spy each frontend once")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--port", type=int, default=8752)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    if args.profile and not PY_SPY.is_file():
        print(f"py-spy is missing: {sys.executable} -m pip install py-spy", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    servers = {**contenders(args.model, args.port, work), FLOOR: _floor(args.model, args.port)}
    profiles: dict[str, dict[str, Any]] = {}

    def measure(server: subprocess.Popen[bytes]) -> Run:
        name = next(n for n, cmd in servers.items() if cmd == server.args)
        _load(args, prompts=args.concurrency)  # warm-up
        run = _measured(server.pid, args)
        if args.profile and name not in profiles:
            profiles[name] = _profiled(server.pid, args, work / f"profile-{len(profiles)}.txt")
        return run

    url = f"http://127.0.0.1:{args.port}"
    samples = serve_in_turns(servers, args.rounds, answers(url, MODEL_ID), ENV, work, measure)
    expected = args.prompts * args.output_len
    wrong = {n: [r.output_tokens for r in runs if r.output_tokens != expected or r.failed]
             for n, runs in samples.items()}  # fmt: skip
    report = _report(samples, args, profiles)
    notes = _notes(args.out / "frontend.md")
    write_report(args.out, "frontend", report, _markdown(report, notes))
    if any(wrong.values()):
        print(f"output tokens differ from {expected} (ignore_eos not honoured?): {wrong}")
        return 1
    return 0


def _floor(model: str, port: int) -> list[str]:
    """The floor's command (gateway/bench/floor.py), with the engine settings of the
    other two."""
    options = {k: v for k, v in engine_options(model).items() if k != "model"}
    return [
        sys.executable, "-m", "gateway.bench.floor", "--model", model,
        "--served-model-name", MODEL_ID, "--port", str(port),
        "--options", json.dumps(options),
    ]  # fmt: skip


def _load(args: argparse.Namespace, prompts: int) -> dict[str, Any]:
    """`vllm bench serve` against the server on `args.port`; its result (quiet)."""
    from vllm.benchmarks.serve import add_cli_args, main_async
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    options = parser.parse_args(
        [
            "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
            "--base-url", f"http://127.0.0.1:{args.port}",
            "--model", MODEL_ID, "--tokenizer", args.model,
            "--dataset-name", "random", "--random-input-len", str(args.input_len),
            "--random-output-len", str(args.output_len), "--ignore-eos",
            "--num-prompts", str(prompts), "--max-concurrency", str(args.concurrency),
            "--temperature", "0", "--ready-check-timeout-sec", "0", "--disable-tqdm",
        ]
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        result: dict[str, Any] = asyncio.run(main_async(options))
    return result


def _measured(pid: int, args: argparse.Namespace) -> Run:
    """One load of `args.prompts`, with the CPU the frontend (`pid`) and the engine's
    processes spent on it."""
    import psutil

    frontend = psutil.Process(pid)
    engine = _engine(frontend)
    before = _cpu([frontend]), _cpu(engine)
    start = time.perf_counter()
    result = _load(args, args.prompts)
    wall = time.perf_counter() - start
    after = _cpu([frontend]), _cpu(engine)
    return Run(
        completed=result["completed"],
        failed=result["failed"],
        output_tokens=result["total_output_tokens"],
        frontend_cpu_s=round(after[0] - before[0], 3),
        engine_cpu_s=round(after[1] - before[1], 3),
        wall_s=round(wall, 3),
        ttft_p50_ms=round(float(result["median_ttft_ms"]), 1),
    )


def _engine(frontend: Any) -> list[Any]:
    """The frontend's child processes: vLLM's engine core (named so by vLLM) and its
    model worker. A frontend without an engine core child is not one."""
    children = frontend.children(recursive=True)
    if not any("EngineCore" in child.name() for child in children):
        raise RuntimeError(f"process {frontend.pid} has no EngineCore child: not a frontend")
    return list(children)


def _cpu(processes: list[Any]) -> float:
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def _profiled(pid: int, args: argparse.Namespace, raw: Path) -> dict[str, Any]:
    """A load sampled by py-spy: shares of the frontend's samples by concern, and the
    functions with most samples of their own."""
    spy = subprocess.Popen(
        [str(PY_SPY), "record", "--pid", str(pid), "--format", "raw", "--output", str(raw),
         "--rate", str(args.rate), "--gil", "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    time.sleep(1.0)  # attached
    _load(args, 3 * args.prompts)  # py-spy --gil keeps a few hundred samples per load
    spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    spy.wait(timeout=60)
    stacks = read_stacks(raw)
    total = sum(stacks.values()) or 1
    concerns = by_concern(stacks, CONCERNS)
    own = own_samples(stacks)
    return {
        "samples": sum(stacks.values()),
        "concerns": {k: round(100 * v / total, 1) for k, v in concerns.most_common()},
        "top_functions": [[f, round(100 * v / total, 1)] for f, v in own.most_common(25)],
    }


def _report(
    samples: dict[str, list[Run]], args: argparse.Namespace, profiles: dict[str, Any]
) -> dict[str, Any]:
    def pooled(runs: list[Run], attribute: str) -> float:
        tokens = sum(r.output_tokens for r in runs)
        return round(sum(float(getattr(r, attribute)) for r in runs) / tokens * 1e6, 1)

    def by_round(side: list[Run]) -> list[float]:
        return [round(a.frontend_us_per_token / b.frontend_us_per_token, 3)
                for a, b in zip(side, samples[THEIRS], strict=True)]  # fmt: skip

    def ratio(side: str) -> float:
        ours = pooled(samples[side], "frontend_cpu_s")
        return round(ours / pooled(samples[THEIRS], "frontend_cpu_s"), 3)

    return {
        "benchmark": "frontend CPU per streamed token",
        "command": "switchyard bench frontend",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load": {
            "driver": "vllm bench serve --backend openai-chat --dataset-name random --ignore-eos",
            "prompts": args.prompts,
            "concurrency": args.concurrency,
            "input_len": args.input_len,
            "output_len": args.output_len,
            "rounds": args.rounds,
        },
        "results": {
            name: {
                "frontend_us_per_token": pooled(runs, "frontend_cpu_s"),
                "engine_us_per_token": pooled(runs, "engine_cpu_s"),
                "rounds": [r.row() for r in runs],
            }
            for name, runs in samples.items()
        },
        "ratios": {
            RATIO: ratio(OURS),
            "by round": by_round(samples[OURS]),
            FLOOR_RATIO: ratio(FLOOR),
            "floor by round": by_round(samples[FLOOR]),
        },
        "gateway_us_per_token": round(
            pooled(samples[OURS], "frontend_cpu_s") - pooled(samples[FLOOR], "frontend_cpu_s"), 1
        ),
        "goal": "≤ 0.9",
        "profiles": profiles,
    }


def _markdown(report: dict[str, Any], notes: str) -> str:
    m, load = report["machine"], report["load"]
    lines = [
        "# Frontend CPU per streamed token: Switchyard with in-process vLLM vs `vllm serve`",
        "",
        f"`{report['command']}` on {m['cpus']} CPUs ({m['cpu']}), vLLM {m['vllm']}, "
        f"{report['when']}. Load: `{load['driver']}`, {load['prompts']} prompts of "
        f"{load['input_len']} tokens, {load['output_len']} output tokens each, concurrency "
        f"{load['concurrency']}, {load['rounds']} alternating rounds.",
        "",
        "CPU time of the process that serves HTTP per output token; the engine's processes "
        "(EngineCore and its worker, children in both) are excluded and shown beside it:",
        "",
        "| server | round | frontend µs/token | engine µs/token | tokens/s | "
        "TTFT p50 ms | output tokens |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, result in report["results"].items():
        for i, r in enumerate(result["rounds"], 1):
            lines.append(
                f"| {name} | {i} | {r['frontend_us_per_token']} | {r['engine_us_per_token']} "
                f"| {r['tokens_per_s']} | {r['ttft_p50_ms']} | {r['output_tokens']} |"
            )
        lines.append(
            f"| {name} | pooled | **{result['frontend_us_per_token']}** | "
            f"{result['engine_us_per_token']} | | | |"
        )
    ratios = report["ratios"]
    lines += [
        "",
        f"- {RATIO}: **{ratios[RATIO]}** (goal {report['goal']}); by round "
        f"{ratios['by round']} (min {min(ratios['by round'])}, max {max(ratios['by round'])})",
        f"- {FLOOR_RATIO}: **{ratios[FLOOR_RATIO]}**; by round {ratios['floor by round']}",
        f"- the gateway's own CPU per token (ours minus the floor, pooled): "
        f"**{report['gateway_us_per_token']} µs**",
        "",
    ]
    profiles = report["profiles"]
    if profiles:
        names = list(profiles)
        concerns = dict.fromkeys(c for p in profiles.values() for c in p["concerns"])
        lines += [
            "## Where the frontends' time goes (py-spy --gil, % of each one's samples)",
            "",
            "A thread preempted while it holds the GIL is still sampled: on a busy machine "
            "uvicorn's `send` (its write() wakes the client) counts wall time more than CPU.",
            "",
            f"| concern | {' | '.join(names)} |",
            f"| --- |{' --- |' * len(names)}",
        ]
        for concern in concerns:
            shares = [str(p["concerns"].get(concern, 0.0)) for p in profiles.values()]
            lines.append(f"| {concern} | {' | '.join(shares)} |")
        for name, profile in profiles.items():
            lines += ["", f"{name}, functions by own samples ({profile['samples']} samples):", ""]
            lines += ["| function | % |", "| --- | --- |"]
            lines += [f"| `{f}` | {v} |" for f, v in profile["top_functions"]]
        lines.append("")
    return "\n".join(lines) + (f"{NOTES}\n{notes}" if notes else "")


def _notes(path: Path) -> str:
    """What follows `NOTES` in the report at `path`: written by hand, kept across runs."""
    text = path.read_text() if path.is_file() else ""
    return text.partition(NOTES + "\n")[2]


if __name__ == "__main__":
    sys.exit(main())
