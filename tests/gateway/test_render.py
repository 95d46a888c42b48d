"""Engine chunks → OpenAI bodies: tool calls, reasoning and vLLM's stop_reason, whole
and streamed."""

from __future__ import annotations

from engines.types import Chunk, ToolCallDelta
from gateway.openai.render import ChatRenderer, CompletionRenderer

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
