"""Engine chunks → OpenAI bodies: tool calls, reasoning and vLLM's stop_reason, whole
and streamed."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from hypothesis import given, settings
from hypothesis import strategies as st

from engines.errors import GenerationFailed
from engines.types import Chunk, ToolCallDelta
from gateway.errors import GatewayError, as_gateway_error
from gateway.openai.render import ChatRenderer, CompletionRenderer, Renderer
from gateway.openai.sse import DONE, event, framed

CALL = (
    ToolCallDelta(0, "call_1", "get_weather", '{"city": '),
    ToolCallDelta(0, None, None, '"Paris"}'),
)


def test_chat_tool_call_whole_and_streamed() -> None:
    renderer = ChatRenderer("rid", "m", 1, logprobs=False)
    chunks = [Chunk(0, "", 3, 9, tool_calls=CALL[:1], reasoning="think"),
              Chunk(0, "", 2, 0, (), "tool_calls", CALL[1:])]  # fmt: skip
    streamed = [d for c in chunks for d in renderer.deltas(c)]
    for chunk in chunks:
        renderer.add(chunk)
    (choice,) = renderer.response()["choices"]
    assert choice["message"]["content"] is None
    assert choice["message"]["reasoning"] == choice["message"]["reasoning_content"] == "think"
    assert choice["message"]["tool_calls"] == [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    ]  # fmt: skip
    assert choice["finish_reason"] == "tool_calls"
    assert "stop_reason" not in choice  # nothing stopped it: OpenAI's shape exactly
    first, second, finish = streamed
    assert first["delta"]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": ',
    }
    assert "name" not in second["delta"]["tool_calls"][0]["function"]
    assert finish == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}


def test_stop_reason_is_relayed_where_a_stop_ended_the_choice() -> None:
    chat = ChatRenderer("rid", "m", 1, logprobs=False)
    stopped = Chunk(0, "Yes", 1, 5, (), "stop", stop_reason=".")
    assert chat.deltas(stopped)[-1]["stop_reason"] == "."
    chat.add(stopped)
    assert chat.response()["choices"][0]["stop_reason"] == "."
    completion = CompletionRenderer("rid", "m", 1, logprobs=False)
    token_stop = Chunk(0, " blue", 1, 3, (), "stop", stop_reason=30)
    assert completion.deltas(token_stop)[0]["stop_reason"] == 30
    completion.add(token_stop)
    assert completion.response()["choices"][0]["stop_reason"] == 30


def test_cached_prompt_tokens_are_summed_per_prompt_where_the_engine_says_them() -> None:
    """prompt_tokens_details comes only where an engine reported cached tokens (as
    `vllm serve` sends it only with --enable-prompt-tokens-details); each prompt (slot)
    counts once, as its prompt_tokens do."""
    said = CompletionRenderer("rid", "m", 2, logprobs=False)
    said.count(Chunk(0, "a", 1, 40, cached_tokens=32), prompt_slot=0)
    said.count(Chunk(0, "b", 1, 40, cached_tokens=32), prompt_slot=0)
    said.count(Chunk(1, "c", 1, 20, cached_tokens=0), prompt_slot=1)
    assert said.usage.body() == {
        "prompt_tokens": 60,
        "completion_tokens": 3,
        "total_tokens": 63,
        "prompt_tokens_details": {"cached_tokens": 32},
    }
    unsaid = ChatRenderer("rid", "m", 1, logprobs=False)
    unsaid.count(Chunk(0, "a", 1, 40), prompt_slot=0)
    assert "prompt_tokens_details" not in unsaid.usage.body()


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(min_size=1),
    index=st.integers(0, 3),
    include_usage=st.booleans(),
    renderer=st.sampled_from([ChatRenderer, CompletionRenderer]),
)
def test_a_plain_chunks_templated_event_is_the_generic_one(
    text: str, index: int, include_usage: bool, renderer: type[Renderer]
) -> None:
    streamed = renderer("rid", 'm"odel', 4, logprobs=False)
    chunk = Chunk(index, text, 1, 0)
    assert streamed.plain(chunk)
    generic = [event(streamed.chunk([d], include_usage)) for d in streamed.deltas(chunk)]
    for _ in range(2):  # rendering the template, then reusing it
        assert streamed.events(chunk, include_usage) == generic


def test_chunks_that_are_not_plain_take_the_generic_path() -> None:
    chat = ChatRenderer("rid", "m", 1, logprobs=False)
    with_logprobs = ChatRenderer("rid", "m", 1, logprobs=True)
    assert not chat.plain(Chunk(0, "", 1, 0))  # the end-of-sequence token
    assert not chat.plain(Chunk(0, "x", 1, 0, finish_reason="stop"))
    assert not chat.plain(Chunk(0, "x", 1, 0, reasoning="r"))
    assert not chat.plain(Chunk(0, "x", 1, 0, tool_calls=CALL[:1]))
    assert not with_logprobs.plain(Chunk(0, "x", 1, 0))


async def _sends(chunks: list[Chunk], fail: bool = False) -> tuple[ChatRenderer, list[bytes]]:
    """What `framed` hands the response to send, one item per send."""

    async def items() -> AsyncGenerator[tuple[int, Chunk], None]:
        for chunk in chunks:
            yield 0, chunk
        if fail:
            raise GenerationFailed("the backend broke")

    def told(exc: Exception) -> GatewayError:
        error = as_gateway_error(exc)
        assert error is not None
        return error

    renderer = ChatRenderer("rid", "m", 1, logprobs=False)
    return renderer, [s async for s in framed(renderer, items(), True, told)]


async def test_a_stream_sends_its_head_with_the_first_chunk_and_its_tail_at_once() -> None:
    """The events are those of the head, each chunk and the tail, in order; the head
    leaves with the first chunk's event and the usage with `[DONE]`: a stream of n
    chunks is n + 1 sends."""
    chunks = [Chunk(0, "Hel", 1, 4), Chunk(0, "lo", 1, 0), Chunk(0, "", 0, 0, (), "stop")]
    _, sends = await _sends(chunks)
    reference = ChatRenderer("rid", "m", 1, logprobs=False)
    events = reference.head(True)
    for chunk in chunks:
        reference.count(chunk, 0)
        events += reference.events(chunk, True)
    events += reference.tail(True)
    assert len(sends) == len(chunks) + 1
    assert b"".join(sends) == b"".join(events)
    assert sends[0] == events[0] + events[1]  # the role's event, then "Hel"
    assert sends[-1].endswith(DONE)
    assert b'"usage":{"prompt_tokens":4' in sends[-1]


async def test_a_stream_that_fails_before_its_first_event_still_opens_with_its_head() -> None:
    renderer, sends = await _sends([], fail=True)
    (only,) = sends
    assert only.startswith(renderer.head(True)[0])
    assert b"the backend broke" in only
    assert only.endswith(DONE)
