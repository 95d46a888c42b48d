"""Responses items → the chat conversation, as vLLM's server maps them."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import InvalidRequest
from gateway.responses import items
from gateway.responses.schemas import ResponsesRequest


def request(**body: Any) -> ResponsesRequest:
    return ResponsesRequest.model_validate({"model": "m", "input": "hi", **body})


def test_a_tool_round_conversation() -> None:
    given = items.input_items(
        request(
            input=[
                {"role": "user", "content": "Weather in Paris?"},
                {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "reasoning", "summary": [], "content": []},
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "It is sunny."}],
                },
            ]
        )
    )
    assert all(item["id"] for item in given)
    assert items.messages(given) == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "w", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
        {"role": "assistant", "content": "It is sunny."},
    ]


def test_an_assistant_text_fills_a_turn_made_of_calls() -> None:
    call = {"type": "function_call", "call_id": "c", "name": "w", "arguments": "{}"}
    given = items.input_items(request(input=[call, {"role": "assistant", "content": "Calling w."}]))
    (turn,) = items.messages(given)
    assert turn["content"] == "Calling w."
    assert len(turn["tool_calls"]) == 1


def test_chat_body_maps_tools_format_and_instructions() -> None:
    body = request(
        instructions="Be brief.",
        tools=[{"type": "function", "name": "w", "parameters": {"type": "object"}}],
        tool_choice={"type": "function", "name": "w"},
        text={"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}},
        max_output_tokens=7,
        top_k=3,
        include=["message.output_text.logprobs"],
        top_logprobs=2,
    )
    chat = items.chat_body(body, [], items.input_items(body))
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "w"}}
    assert chat["response_format"]["json_schema"] == {"name": "s", "schema": {"type": "object"}}
    assert (chat["max_completion_tokens"], chat["top_k"]) == (7, 3)
    assert (chat["logprobs"], chat["top_logprobs"]) == (True, 2)


def test_history_comes_before_the_input_and_instructions_do_not_carry() -> None:
    body = request(input="second")
    history = items.input_items(request(input="first"))
    chat = items.chat_body(body, history, items.input_items(body))
    assert [m["content"] for m in chat["messages"]] == ["first", "second"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
        ({"tools": [{"type": "mcp", "server_label": "x"}]}, "tools[0].type"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"input": [{"type": "computer_call_output", "call_id": "c"}]}, "input[0].type"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "w"}]}, "input[0].arguments"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"input": [{"type": "reasoning", "encrypted_content": "x"}]},
            "input[0].encrypted_content",
        ),
    ],
)
def test_what_is_not_served_is_refused_by_name(body: dict[str, Any], param: str) -> None:
    parsed = request(**body)
    with pytest.raises(InvalidRequest) as caught:
        items.chat_body(parsed, [], items.input_items(parsed))
    assert caught.value.param == param
