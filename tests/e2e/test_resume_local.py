"""The in-process vLLM engine continues a cut generation (gateway/resume.py): its
streams say their token ids, and a continuation built from the first k chunks (a
completion of prompt + relayed ids, `resumed` = k) gives the rest of the answer, so
relayed text + held-back text + continuation = the uninterrupted answer.

The engine runs on the session gateway's event loop; the test hands its coroutines
to that loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import httpx
import pytest

from engines.types import Chunk, GenerationRequest, Message
from gateway.resume import Stops, Transcript, continuation, owed
from tests.e2e.conftest import MODEL_ID, Gateway, engine_calls

pytestmark = pytest.mark.vllm
T = TypeVar("T")
CUT_AFTER = 5


def on_engine_loop(gateway: Gateway, step: Coroutine[Any, Any, T]) -> T:
    llm = gateway.engine._llm
    if llm.output_handler is None:  # AsyncLLM starts it with its first request
        body = {"model": MODEL_ID, "prompt": "Hi", "max_tokens": 1}
        httpx.post(gateway.url + "/v1/completions", json=body, timeout=60).raise_for_status()
    loop = llm.output_handler.get_loop()
    return asyncio.run_coroutine_threadsafe(step, loop).result(timeout=120)


def finishes(chunks: list[Chunk]) -> list[tuple[str | None, str | int | None]]:
    return [(c.finish_reason, c.stop_reason) for c in chunks if c.finish_reason]


async def collect(gateway: Gateway, request: GenerationRequest) -> list[Chunk]:
    return [chunk async for chunk in gateway.engine.generate(request)]


@pytest.mark.parametrize(
    "prompt",
    [
        (Message("user", "Tell me about the sea in a few lines."),),
        "Once upon a time, the old lighthouse keeper",
    ],
    ids=["chat", "completions"],
)
def test_the_in_process_engine_continues_a_cut_generation(
    gateway: Gateway, prompt: str | tuple[Message, ...]
) -> None:
    request = GenerationRequest(
        "resume-local", prompt, max_tokens=32, temperature=0, stop=("\n\n",)
    )
    whole = on_engine_loop(gateway, collect(gateway, request))
    transcript = Transcript([request])
    texts = [c for c in whole if c.text]
    assert len(texts) > CUT_AFTER + 3
    for chunk in whole[: whole.index(texts[CUT_AFTER])]:  # the chunks relayed before the cut
        transcript.record(chunk)
    (strand,) = transcript.unfinished()
    assert strand.prompt_ids
    assert transcript.refusal() is None

    held = on_engine_loop(gateway, owed(gateway.engine, strand))
    rest = on_engine_loop(gateway, collect(gateway, continuation(strand, 1)))
    stops, tokens, continued = Stops.of(strand, held), len(strand.output_ids), []
    for chunk in rest:  # the stop string is matched by the gateway, across the break
        tokens += len(chunk.token_ids)
        continued.append(stops.feed(chunk, tokens))
        if stops.stopped:
            break

    relayed = "".join(strand.text)
    assert relayed + "".join(c.text for c in continued) == "".join(c.text for c in whole)
    assert finishes(continued) == finishes(whole)
    assert strand.output_ids + [t for c in continued for t in c.token_ids] == [
        t for c in whole for t in c.token_ids
    ]


def test_a_generation_the_engine_aborts_goes_on_and_only_the_whole_answer_is_cached(
    gateway: Gateway,
) -> None:
    """vLLM ends the generations it aborts itself (its pause in "abort" mode, shutdown,
    a fault) with finish_reason "abort". Relayed as "stop", the cut answer would read as
    whole, and be cached for the next identical request. The gateway takes it as the
    engine's failure instead: here, paused and resumed at once, the same engine goes on
    with the answer, byte for byte the uninterrupted one (greedy)."""
    llm = gateway.engine._llm
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Tell me a long story about the sea."}],
        "max_tokens": 48,
        "temperature": 0,
        "stream": True,
    }

    def pause(events: int) -> None:
        if events == CUT_AFTER:
            try:
                on_engine_loop(gateway, llm.pause_generation(mode="abort"))
            finally:
                on_engine_loop(gateway, llm.resume_generation())

    with engine_calls(gateway.engine) as calls:
        cache, cut = streamed(gateway, body, pause)
    assert cache == "miss"
    assert len(calls.started) == 2  # the answer, then its continuation
    _, reference = streamed(gateway, body, headers={"cache-control": "no-cache"})
    cache, stored = streamed(gateway, body)
    assert cache == "hit"

    for events in (cut, stored):
        assert [e for e in events if "error" in e] == []
        assert text_of(events) == text_of(reference)
        assert [f for e in events for f in finishes_of(e)] == ["length"]


def streamed(
    gateway: Gateway,
    body: dict[str, Any],
    on_event: Callable[[int], None] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """The cache's verdict and the events of a streamed answer; `on_event(k)` after the
    k-th event."""
    events: list[dict[str, Any]] = []
    payload = {**body, "stream_options": {"include_usage": True}}
    url = gateway.url + "/v1/chat/completions"
    with httpx.stream("POST", url, json=payload, headers=headers, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
                if on_event is not None:
                    on_event(len(events))
        return r.headers["x-switchyard-cache"], events


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(c["delta"].get("content") or "" for e in events for c in e.get("choices", []))


def finishes_of(event: dict[str, Any]) -> list[str]:
    return [c["finish_reason"] for c in event.get("choices", []) if c["finish_reason"]]
