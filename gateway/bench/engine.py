"""`make bench-engine`: the gateway's in-process vLLM vs vLLM's own OpenAI server.

Same model, same engine settings (the demo's tool-aware chat template and hermes tool
parser on both), same load (prompts, concurrency, max_tokens, temperature 0), one
server after the other on this machine, in one run; over `--rounds` (3 by default)
the order alternates (A B, B A, A B) so drift in the machine weighs on both alike, and
each side's requests are pooled. Prints output tokens/s and TTFT p50/p99 for both and
their ratios, pooled and round by round (the spread), and writes
docs/benchmarks/engine.{json,md}; `--shape structured` (strict json_schema answers and
forced tool calls, half each) writes engine-structured.{json,md}; `--shape responses`
(the same prompts streamed through /v1/responses on both) engine-responses.{json,md}.
`switchyard bench frontend` measures the same two servers' CPU per streamed token.

    switchyard bench engine [--requests 64] [--concurrency 8] [--max-tokens 64] [--rounds 3]
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

from gateway.bench.load import SHAPES, Load, Sample, results_table, run, summarize
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
OURS = "switchyard (in-process vLLM)"
THEIRS = "vllm serve (OpenAI server)"
ENV = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "PYTHONUNBUFFERED": "1"}
THROUGHPUT = "throughput (ours/vllm, higher is better)"
TTFT_P50 = "ttft_p50 (ours/vllm, lower is better)"


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


def engine_options(model: str) -> dict[str, Any]:
    """The in-process engine's settings (engines.vllm_local.VLLMConfig), those of
    `vllm serve`'s flags in `contenders`: the demo model, eager, a 2048-token context,
    the tool-aware chat template and hermes tool parser."""
    return {
        "model": model,
        "max_model_len": 2048,
        "enforce_eager": True,
        "cpu_kvcache_space_gib": 2,
        "chat_template": str(TOOL_TEMPLATE),
        "tool_parser": "hermes",
    }


def contenders(model: str, port: int, work: Path) -> dict[str, list[str]]:
    """The two servers' commands, ours first, with the same engine settings
    (`engine_options`). Their environment is `ENV`."""
    engine = engine_options(model)
    flags = ["--max-model-len", "2048", "--chat-template", str(TOOL_TEMPLATE)]
    flags += ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    gateway = [{"name": "local", "kind": "vllm", "model_id": MODEL_ID, "options": engine}]
    return {
        OURS: gateway_command(gateway, port, work),
        THEIRS: vllm_server_command(model, MODEL_ID, port, *flags),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(ROOT / "models" / MODEL_ID))
    Load.add_arguments(parser)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="plain")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=8750)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    load = Load.from_arguments(args)
    url = f"http://127.0.0.1:{args.port}"
    work = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    samples = serve_in_turns(
        contenders(args.model, args.port, work),
        args.rounds,
        answers(url, MODEL_ID),
        ENV,
        work,
        lambda _: asyncio.run(run(url, MODEL_ID, load)),
    )
    results = {name: summarize(runs) for name, runs in samples.items()}
    ours, ref = results.values()
    ratios = {
        THROUGHPUT: round(ours.tokens_per_s / ref.tokens_per_s, 3),
        TTFT_P50: round(ours.ttft_p50_ms / ref.ttft_p50_ms, 3),
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
        "rounds": _by_round(samples[OURS], samples[THEIRS]),
    }
    name = "engine" if load.shape == "plain" else f"engine-{load.shape}"
    write_report(args.out, name, report, _markdown(report))
    return 0


def _by_round(ours: list[Sample], theirs: list[Sample]) -> list[dict[str, Any]]:
    """Each round's figures for both and their ratios: the spread behind the pooled
    ratios (round i pairs the i-th run of each)."""
    rows = []
    for a, b in zip(ours, theirs, strict=True):
        mine, ref = summarize([a]), summarize([b])
        rows.append(
            {
                "tokens_per_s": [mine.tokens_per_s, ref.tokens_per_s],
                "ttft_p50_ms": [mine.ttft_p50_ms, ref.ttft_p50_ms],
                THROUGHPUT: round(mine.tokens_per_s / ref.tokens_per_s, 3),
                TTFT_P50: round(mine.ttft_p50_ms / ref.ttft_p50_ms, 3),
            }
        )
    return rows


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
    lines += [
        "Round by round (ours, vllm serve; the order alternates):",
        "",
        "| round | tokens/s | TTFT p50 ms | throughput ratio | TTFT p50 ratio |",
        "| --- | --- | --- | --- | --- |",
    ]
    for i, r in enumerate(report["rounds"], 1):
        lines.append(
            f"| {i} | {r['tokens_per_s'][0]} / {r['tokens_per_s'][1]} | "
            f"{r['ttft_p50_ms'][0]} / {r['ttft_p50_ms'][1]} | {r[THROUGHPUT]} | {r[TTFT_P50]} |"
        )
    spread = {k: [r[k] for r in report["rounds"]] for k in (THROUGHPUT, TTFT_P50)}
    lines += ["", *(f"- {k}: min {min(v)}, max {max(v)}" for k, v in spread.items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
