"""The in-process vLLM engine continues a cut generation (gateway/resume.py): its
streams say their token ids, and a continuation built from the first k chunks (a
completion of prompt + relayed ids, `resumed` = k) gives the rest of the answer, so
relayed text + held-back text + continuation = the uninterrupted answer.

The engine runs on the session gateway's event loop; the test hands its coroutines
to that loop."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx
import pytest

from engines.types import Chunk, GenerationRequest, Message
from gateway.resume import Stops, Transcript, continuation, owed
from tests.e2e.conftest import MODEL_ID, Gateway

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
