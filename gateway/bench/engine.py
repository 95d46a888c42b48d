"""`make bench-engine`: the gateway's in-process vLLM vs vLLM's own OpenAI server.

Same model, same engine settings (the demo's tool-aware chat template and hermes tool
parser on both), same load (prompts, concurrency, max_tokens, temperature 0), one
server after the other on this machine, in one run; with
`--rounds 2` (the default) the order alternates (A B B A) so drift in the machine
weighs on both alike, and each side's requests are pooled. Prints
output tokens/s and TTFT p50/p99 for both and their ratios, and writes
docs/benchmarks/engine.{json,md}; `--shape structured` (strict json_schema answers and
forced tool calls, half each) writes engine-structured.{json,md}; `--shape responses`
(the same prompts streamed through /v1/responses on both) engine-responses.{json,md}.

    switchyard bench engine [--requests 64] [--concurrency 8] [--max-tokens 64] [--rounds 2]
                            [--shape plain|structured|responses]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.bench.load import SHAPES, Load, results_table, run, summarize
from gateway.bench.process import (
    answers,
    gateway_command,
    serve_in_turns,
    vllm_server_command,
    write_report,
)

ROOT = Path(__file__).resolve().parents[2]
MODEL_ID = "smollm2-135m-instruct"
TOOL_TEMPLATE = ROOT / "configs" / "chat-templates" / "smollm2-tools.jinja"


def machine() -> dict[str, Any]:
    import vllm

    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "",
        )
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "vllm": vllm.__version__,
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(ROOT / "models" / MODEL_ID))
    Load.add_arguments(parser)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="plain")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--port", type=int, default=8750)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    load = Load.from_arguments(args)
    url = f"http://127.0.0.1:{args.port}"
    engine = {
        "model": args.model,
        "max_model_len": 2048,
        "enforce_eager": True,
        "cpu_kvcache_space_gib": 2,
        "chat_template": str(TOOL_TEMPLATE),
        "tool_parser": "hermes",
    }
    flags = ["--max-model-len", "2048", "--chat-template", str(TOOL_TEMPLATE)]
    flags += ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "PYTHONUNBUFFERED": "1"}
    work = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    gateway = [{"name": "local", "kind": "vllm", "model_id": MODEL_ID, "options": engine}]
    contenders = {
        "switchyard (in-process vLLM)": gateway_command(gateway, args.port, work),
        "vllm serve (OpenAI server)": vllm_server_command(args.model, MODEL_ID, args.port, *flags),
    }
    samples = serve_in_turns(
        contenders,
        args.rounds,
        answers(url, MODEL_ID),
        env,
        work,
        lambda: asyncio.run(run(url, MODEL_ID, load)),
    )
    results = {name: summarize(runs) for name, runs in samples.items()}
    ours, ref = results.values()
    ratios = {
        "throughput (ours/vllm, higher is better)": round(ours.tokens_per_s / ref.tokens_per_s, 3),
        "ttft_p50 (ours/vllm, lower is better)": round(ours.ttft_p50_ms / ref.ttft_p50_ms, 3),
        "ttft_p99 (ours/vllm, lower is better)": round(ours.ttft_p99_ms / ref.ttft_p99_ms, 3),
    }
    report = {
        "benchmark": _TITLES[load.shape],
        "command": f"switchyard bench engine --shape {load.shape}",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load": {**dataclasses.asdict(load), "rounds": args.rounds},
        "results": {name: r.row() for name, r in results.items()},
        "ratios": ratios,
    }
    name = "engine" if load.shape == "plain" else f"engine-{load.shape}"
    write_report(args.out, name, report, _markdown(report))
    return 0


_TITLES = {
    "plain": "engine path",
    "structured": "engine path, structured outputs and forced tool calls",
    "responses": "engine path through the Responses API (/v1/responses, streamed)",
}


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# {report['benchmark'].capitalize()}: in-process vLLM behind Switchyard vs "
        "vLLM's own server",
        "",
        f"`{report['command']}` on {report['machine']['cpus']} CPUs "
        f"({report['machine']['cpu']}), vLLM {report['machine']['vllm']}, {report['when']}.",
        f"Load: {report['load']}",
        "",
        *results_table(report["results"], "server"),
    ]
    lines += ["", *(f"- {k}: **{v}**" for k, v in report["ratios"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
