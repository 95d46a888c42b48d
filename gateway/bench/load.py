"""A small closed-loop load generator for OpenAI-compatible chat endpoints.

Each request streams with `include_usage`, so TTFT is the time to the first content
delta and output tokens are the server's own count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

PROMPTS = Path(__file__).resolve().parents[2] / "loadtest" / "prompts.txt"
_ANSWER = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
    "required": ["answer", "confidence"],
    "additionalProperties": False,
}
_NOTE = {
    "type": "function",
    "function": {
        "name": "take_note",
        "description": "Write down a short note",
        "parameters": {
            "type": "object",
            "properties": {"title": {"type": "string"}, "text": {"type": "string"}},
            "required": ["title", "text"],
        },
    },
}
# What each request adds to its body, by load shape; request i takes entry i mod len.
# "structured": half strict json_schema answers, half forced (named) tool calls, the
# two grammar-constrained paths of vLLM's server.
SHAPES: dict[str, list[dict[str, Any]]] = {
    "plain": [{}],
    "structured": [
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer", "strict": True, "schema": _ANSWER},
            }
        },
        {"tools": [_NOTE], "tool_choice": {"type": "function", "function": {"name": "take_note"}}},
    ],
    "responses": [{}],  # plain prompts through /v1/responses (_one_response)
}
# The scripted engine's reply where the gateway itself is measured: 16 tokens.
SIXTEEN_TOKENS = " ".join(f"w{i}" for i in range(16))
T = TypeVar("T")


REPORTS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks"


@dataclass(frozen=True, slots=True)
class Load:
    requests: int = 64
    concurrency: int = 8
    max_tokens: int = 64
    warmup: int = 4
    shape: str = "plain"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        default = Load()
        parser.add_argument("--requests", type=int, default=default.requests)
        parser.add_argument("--concurrency", type=int, default=default.concurrency)
        parser.add_argument("--max-tokens", type=int, default=default.max_tokens)

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> Load:
        shape = getattr(args, "shape", "plain")  # only `bench engine` offers --shape
        return cls(args.requests, args.concurrency, args.max_tokens, shape=shape)

    def extra(self, i: int) -> dict[str, Any]:
        """Request i's additions to the body, for this load's shape."""
        extras = SHAPES[self.shape]
        return extras[i % len(extras)]


@dataclass(slots=True)
class Sample:
    """Raw measurements of one load run; several runs pool into one `Result`."""

    ttfts: list[float]
    e2es: list[float]
    tokens: int
    wall_s: float
    failures: int


@dataclass(frozen=True, slots=True)
class Result:
    requests: int
    failures: int
    wall_s: float
    output_tokens: int
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    e2e_p50_ms: float

    def row(self) -> dict[str, Any]:
        return asdict(self)


def results_table(results: dict[str, dict[str, Any]], first_column: str) -> list[str]:
    """Markdown rows for `Result.row()`s by name."""
    lines = [
        f"| {first_column} | tokens/s | TTFT p50 ms | TTFT p99 ms | e2e p50 ms | failures |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['tokens_per_s']} | {r['ttft_p50_ms']} | "
            f"{r['ttft_p99_ms']} | {r['e2e_p50_ms']} | {r['failures']} |"
        )
    return lines


def summarize(samples: list[Sample]) -> Result:
    ttfts = [t for s in samples for t in s.ttfts]
    e2es = [t for s in samples for t in s.e2es]
    tokens = sum(s.tokens for s in samples)
    wall = sum(s.wall_s for s in samples)
    return Result(
        requests=len(e2es) + sum(s.failures for s in samples),
        failures=sum(s.failures for s in samples),
        wall_s=round(wall, 3),
        output_tokens=tokens,
        tokens_per_s=round(tokens / wall, 2),
        ttft_p50_ms=round(percentile(ttfts, 0.5) * 1000, 1),
        ttft_p99_ms=round(percentile(ttfts, 0.99) * 1000, 1),
        e2e_p50_ms=round(statistics.median(e2es) * 1000, 1) if e2es else float("nan"),
    )


def prompts() -> list[str]:
    return [line for line in PROMPTS.read_text().splitlines() if line.strip()]


def alternating(sides: Sequence[T], rounds: int) -> Iterator[tuple[int, T]]:
    """(round, side) in the order A B, B A, A B...: a drift over the run (heat, caches,
    other load) weighs on every side alike. Says on stderr which one runs."""
    for round_ in range(rounds):
        for side in sides if round_ % 2 == 0 else list(reversed(sides)):
            print(f">>> round {round_ + 1}/{rounds}: {side}", file=sys.stderr)
            yield round_, side


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def _one(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    prompt: str,
    max_tokens: int,
    extra: dict[str, Any],
) -> tuple[float, float, int]:
    """(TTFT, end to end, output tokens): the first token is the first content or tool
    call delta."""
    body = {
        **extra,
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return await _timed(client, url + "/v1/chat/completions", body, _chat_event)


async def _one_response(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    prompt: str,
    max_tokens: int,
    extra: dict[str, Any],
) -> tuple[float, float, int]:
    """`_one` through /v1/responses: the first token is the first text or arguments
    delta event, the token count the final response's `output_tokens`."""
    body = {**extra, "model": model, "input": prompt, "max_output_tokens": max_tokens}
    body |= {"temperature": 0, "stream": True}
    return await _timed(client, url + "/v1/responses", body, _response_event)


async def _timed(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    read: Callable[[dict[str, Any]], tuple[bool, int | None]],
) -> tuple[float, float, int]:
    """(TTFT, end to end, output tokens) of one streamed request; `read` says of each
    event whether it carries output and the output token count it reports, if any."""
    start = time.perf_counter()
    ttft = None
    tokens = 0
    async with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            visible, count = read(json.loads(line[6:]))
            if ttft is None and visible:
                ttft = time.perf_counter() - start
            if count is not None:
                tokens = count
    end = time.perf_counter() - start
    return (ttft if ttft is not None else end), end, tokens


def _chat_event(chunk: dict[str, Any]) -> tuple[bool, int | None]:
    usage = chunk.get("usage")
    visible = any(_visible(c["delta"]) for c in chunk["choices"])
    return visible, usage["completion_tokens"] if usage else None


def _response_event(event: dict[str, Any]) -> tuple[bool, int | None]:
    kind = event["type"]
    done = kind in ("response.completed", "response.incomplete")
    visible = kind.endswith(("output_text.delta", "arguments.delta"))
    return visible, event["response"]["usage"]["output_tokens"] if done else None


def _visible(delta: dict[str, Any]) -> bool:
    return bool(delta.get("content") or delta.get("tool_calls"))


async def run(
    url: str, model: str | list[str], load: Load, headers: dict[str, str] | None = None
) -> Sample:
    """Closed-loop load; with several models, request i goes to model i mod len.
    Warm-up: `load.warmup` requests, and at least one per distinct model."""
    models = [model] if isinstance(model, str) else model
    distinct = list(dict.fromkeys(models))
    texts = prompts()
    one = _one_response if load.shape == "responses" else _one
    limits = httpx.Limits(
        max_connections=load.concurrency, max_keepalive_connections=load.concurrency
    )
    timeout = httpx.Timeout(600.0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers) as client:
        for i in range(max(load.warmup, len(distinct))):
            name = distinct[i % len(distinct)]
            await one(client, url, name, texts[i % len(texts)], load.max_tokens, load.extra(i))
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(load.requests):
            queue.put_nowait(i)
        ttfts: list[float] = []
        e2es: list[float] = []
        tokens = failures = 0

        async def worker() -> None:
            nonlocal tokens, failures
            while not queue.empty():
                i = queue.get_nowait()
                try:
                    model_i = models[i % len(models)]
                    prompt = texts[i % len(texts)]
                    ttft, e2e, n = await one(
                        client, url, model_i, prompt, load.max_tokens, load.extra(i)
                    )
                except httpx.HTTPError:
                    failures += 1
                    continue
                ttfts.append(ttft)
                e2es.append(e2e)
                tokens += n

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(load.concurrency)))
        wall = time.perf_counter() - start
    return Sample(ttfts, e2es, tokens, wall, failures)


def bench_parser(doc: str | None, port: int, **defaults: Any) -> argparse.ArgumentParser:
    """A benchmark's command line: the load's flags (with this benchmark's
    `defaults`), `--port` for the servers it starts, `--out` for its report."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    Load.add_arguments(parser)
    parser.set_defaults(**defaults)
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--out", type=Path, default=REPORTS)
    return parser
