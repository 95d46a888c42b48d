"""The Responses renderer on engine chunks: reasoning, text and tool calls become items
in the order produced, with the same items whole and streamed."""

from __future__ import annotations

import json

from engines.types import Chunk, ToolCallDelta
from gateway.responses.render import ResponsesRenderer
from gateway.responses.schemas import ResponsesRequest

CHUNKS = [
    Chunk(0, "", 1, 9, reasoning="Think. "),
    Chunk(0, "", 1, 9, reasoning="Done."),
    Chunk(0, "Calling.", 1, 9),
    Chunk(0, "", 1, 9, tool_calls=(ToolCallDelta(0, "call_a", "w", '{"ci'),)),
    Chunk(0, "", 1, 9, tool_calls=(ToolCallDelta(0, arguments='ty": "Paris"}'),)),
    Chunk(0, "", 1, 9, tool_calls=(ToolCallDelta(1, "call_b", "t", "{}"),)),
    Chunk(0, "", 0, 9, finish_reason="tool_calls"),
]


def renderer() -> ResponsesRenderer:
    body = ResponsesRequest.model_validate({"model": "m", "input": "hi"})
    return ResponsesRenderer("rid", body, keep=None)


async def whole() -> dict[str, object]:
    r = renderer()
    for chunk in CHUNKS:
        r.count(chunk, 0)
        r.add(chunk)
    await r.seal()
    return r.response()


async def streamed() -> list[dict[str, object]]:
    r = renderer()
    frames = r.head(False)
    for chunk in CHUNKS:
        r.count(chunk, 0)
        frames += r.events(chunk, False)
    await r.seal()
    frames += r.tail(False)
    return [json.loads(f.split(b"\ndata: ", 1)[1]) for f in frames]


async def test_items_in_the_order_produced() -> None:
    body = await whole()
    output = body["output"]
    assert isinstance(output, list)
    assert [item["type"] for item in output] == [
        "reasoning",
        "message",
        "function_call",
        "function_call",
    ]
    assert output[0]["content"] == [{"type": "reasoning_text", "text": "Think. Done."}]
    assert output[1]["content"][0]["text"] == "Calling."
    assert (output[2]["call_id"], output[2]["name"]) == ("call_a", "w")
    assert json.loads(output[2]["arguments"]) == {"city": "Paris"}
    assert body["usage"] == {
        "input_tokens": 9,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 6,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 15,
    }


async def test_stream_ends_with_the_same_response() -> None:
    events = await streamed()
    kinds = [e["type"] for e in events]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert kinds[0:2] == ["response.created", "response.in_progress"]
    assert (
        kinds.count("response.output_item.added") == kinds.count("response.output_item.done") == 4
    )
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.content_part.added")
    final = events[-1]
    assert final["type"] == "response.completed"
    expected = await whole()
    ours = final["response"]
    assert isinstance(ours, dict)
    strip = lambda out: [{k: v for k, v in i.items() if k != "id"} for i in out]  # noqa: E731
    assert strip(ours["output"]) == strip(expected["output"])  # type: ignore[arg-type]
    arguments = [
        e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"
    ]
    assert "".join(arguments) == '{"city": "Paris"}{}'
