"""`make bench-adapters`: output tokens/s with traffic on the base model vs spread over
1, 2 and 4 LoRA adapters, on one in-process vLLM engine, in one run.

Every mix runs against the same gateway process (max_loras=4, so all adapters fit in
the engine's slots), one after the other with the same load, and is reported as a
ratio to base-only traffic. Goal: >= 0.85x of base while the adapters fit.

    switchyard bench adapters [--requests 64] [--concurrency 8] [--max-tokens 64]
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.bench.engine import MODEL_ID, ROOT, machine
from gateway.bench.load import Load, bench_parser, run, summarize
from gateway.bench.process import answers, gateway_command, server_process

ADAPTERS = {
    "shout": "adapters/shout",
    "json": "adapters/json",
    "shout-b": "adapters/shout",
    "json-b": "adapters/json",
}
MIXES = {
    "base only": [MODEL_ID],
    "1 adapter": ["shout"],
    "2 adapters": ["shout", "json"],
    "4 adapters": list(ADAPTERS),
}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, 8751)
    args = parser.parse_args(argv)
    load = Load.from_arguments(args)
    url = f"http://127.0.0.1:{args.port}"
    options = {
        "model": str(ROOT / "models" / MODEL_ID),
        "max_model_len": 2048,
        "enforce_eager": True,
        "cpu_kvcache_space_gib": 2,
        "enable_lora": True,
        "max_loras": 4,
        "max_lora_rank": 16,
    }
    engine = {
        "name": "local",
        "kind": "vllm",
        "model_id": MODEL_ID,
        "options": options,
        "adapters": [{"name": n, "path": str(ROOT / p)} for n, p in ADAPTERS.items()],
    }
    work = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    cmd = gateway_command([engine], args.port, work)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    results = {}
    with server_process(cmd, answers(url, "json-b"), work / "gateway.log", env):
        for name, models in MIXES.items():
            print(f">>> {name}: {models}", file=sys.stderr)
            results[name] = summarize([asyncio.run(run(url, models, load))])
    base = results["base only"].tokens_per_s
    report: dict[str, Any] = {
        "benchmark": "adapters",
        "command": "make bench-adapters",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load": {
            "requests": load.requests,
            "concurrency": load.concurrency,
            "max_tokens": load.max_tokens,
            "max_loras": 4,
        },
        "results": {
            k: {**r.row(), "ratio_to_base": round(r.tokens_per_s / base, 3)}
            for k, r in results.items()
        },
    }
    lines = [
        "# Multi-LoRA: tokens/s over adapters, as a ratio to base-only traffic",
        "",
        f"`{report['command']}` on {report['machine']['cpus']} CPUs "
        f"({report['machine']['cpu']}), vLLM {report['machine']['vllm']}, {report['when']}.",
        f"Load: {report['load']}",
        "",
        "| traffic | tokens/s | ratio to base | TTFT p50 ms | TTFT p99 ms | failures |",
        "| --- | --- | --- | --- | --- | --- |",
        *(
            f"| {k} | {r['tokens_per_s']} | **{r['ratio_to_base']}** | {r['ttft_p50_ms']} | "
            f"{r['ttft_p99_ms']} | {r['failures']} |"
            for k, r in report["results"].items()
        ),
        "",
    ]
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "adapters.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "adapters.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
