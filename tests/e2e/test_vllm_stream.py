"""Streamed chat answers read from vLLM's outputs (engines/vllm_stream.py) give the
chunks that vLLM's own stream generator gives once its JSON is read back
(engines/openai_wire.py's EventReader, the path the engine took before): the same
outputs go through both, on the session gateway's serving objects (the demo model's
tokenizer, the tool-aware template), with the hermes tool parser and without a parser.
Chunks compare whole except their token counts, which the two paths spread differently
and which must add up to the same total; tool calls' ids are random on both."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from engines.openai_wire import EventReader, read_events
from engines.types import Chunk
from engines.vllm_serving import _events
from tests.e2e.conftest import MODEL_ID, Gateway

pytestmark = pytest.mark.vllm

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
STREAM = {"stream": True, "stream_options": {"include_usage": True}}


def body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL_ID, "messages": ASK, "return_token_ids": True, **STREAM, **fields}


# (case, request body, each choice's text, finish reason, stop reason)
CASES = [
    ("text", body(), ["The weather in Paris is mild today."], "length", None),
    ("stop string", body(stop=["\n\n"]), ["Sunny, 18 degrees."], "stop", "\n\n"),
    ("no token ids", body(return_token_ids=False), ["Paris is in France."], "stop", None),
    ("auto tool call", body(tools=[WEATHER]), [CALL], "stop", None),
    ("two tool calls, parallel off", body(tools=[WEATHER], parallel_tool_calls=False),
     [CALL + "\n" + CALL.replace("Paris", "Rome")], "stop", None),
    ("named tool", body(tools=[WEATHER], tool_choice={
        "type": "function", "function": {"name": "get_weather"}}),
     ['{"city": "Paris"}'], "stop", None),
    ("text then a call", body(tools=[WEATHER]), ["Let me check. " + CALL], "stop", None),
    ("two choices", body(n=2), ["Mild and sunny.", "Rain is likely."], "length", None),
    ("logprobs", body(logprobs=True, top_logprobs=2), ["Quite warm."], "length", None),
    ("echo", {**body(return_token_ids=False), "echo": True, "add_generation_prompt": False,
              "messages": [*ASK, {"role": "assistant", "content": "It is"}]},
     [" sunny."], "stop", None),
]  # fmt: skip


@pytest.mark.parametrize("parser", ["hermes", "none"])
@pytest.mark.parametrize(("case", "fields", "texts", "finish", "stop"), CASES,
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_chat_stream_chunks_match_vllms_generator_read_back(
    gateway: Gateway,
    case: str,
    fields: dict[str, Any],
    texts: list[str],
    finish: str,
    stop: str | None,
    parser: str,
) -> None:
    from vllm.entrypoints.generate.base.protocol import RequestResponseMetadata
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat

    serving = gateway.engine._serving
    assert serving is not None
    chat = copy.copy(serving.chat)
    if parser == "none":  # as served without --tool-call-parser
        chat.parser_cls = None
    tokenizer = chat.renderer.tokenizer
    request = ChatCompletionRequest.model_validate(json.loads(json.dumps(fields)))
    conversation = fields["messages"]

    async def both() -> tuple[list[Chunk], list[Chunk]]:
        def args() -> tuple[Any, ...]:
            generated = outputs(tokenizer, texts, finish, stop, fields)
            metadata = RequestResponseMetadata(request_id="chatcmpl-1")
            return (request.model_copy(), generated, "chatcmpl-1", MODEL_ID, conversation,
                    tokenizer, metadata)  # fmt: skip

        ours = chat.chat_completion_stream_generator(*args())
        sse = OpenAIServingChat.chat_completion_stream_generator(chat, *args())
        theirs = read_events(_events(sse), EventReader(chat=True))
        return [c async for c in ours], [c async for c in theirs]

    ours, theirs = asyncio.run(both())
    assert sum(c.token_count for c in ours) == sum(c.token_count for c in theirs)
    assert [uncounted(c) for c in ours] == [uncounted(c) for c in theirs]
    assert any(c.text or c.tool_calls for c in ours), ours


def uncounted(chunk: Chunk) -> Chunk:
    """`chunk` without its token count, and its tool calls' ids (random) only said."""
    calls = tuple(dataclasses.replace(c, id=c.id and "id") for c in chunk.tool_calls)
    return dataclasses.replace(chunk, token_count=0, tool_calls=calls)


async def outputs(
    tokenizer: Any, texts: list[str], finish: str, stop: str | None, fields: dict[str, Any]
) -> AsyncGenerator[Any, None]:
    """What vLLM's engine yields for a delta-streamed request: per step, each choice's
    next token and its text; the prompt's ids on every output; the first step a
    prefill that adds nothing (chunked prefill)."""
    from vllm.logprobs import Logprob
    from vllm.outputs import CompletionOutput, RequestOutput

    prompt = list(range(100, 140))
    ids = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    steps = max(len(i) for i in ids)
    nothing = [CompletionOutput(0, "", [], None, [] if fields.get("logprobs") else None)]
    yield RequestOutput("r", None, prompt, None, nothing, False, num_cached_tokens=16)
    for step in range(steps):
        outs = []
        for index, choice in enumerate(ids):
            if step >= len(choice):
                continue
            token = choice[step]
            last = step == len(choice) - 1
            logprobs = None
            if fields.get("logprobs"):
                logprobs = [{token: Logprob(-0.25, 1, tokenizer.decode([token])),
                             7: Logprob(-2.5, 2, tokenizer.decode([7]))}]  # fmt: skip
            outs.append(
                CompletionOutput(
                    index,
                    tokenizer.decode(choice[: step + 1])[len(tokenizer.decode(choice[:step])) :],
                    [token],
                    None,
                    logprobs,
                    finish_reason=finish if last else None,
                    stop_reason=stop if last else None,
                )
            )
        done = step == steps - 1
        yield RequestOutput("r", None, prompt, None, outs, done, num_cached_tokens=16)
