"""The demo model's tool-aware chat template (`configs/chat-templates/smollm2-tools.jinja`).

Without tools it must render exactly what the model's own ChatML template renders; with
tools it must lay out a Hermes-style prompt whose `<tool_call>` answers vLLM's `hermes`
tool parser reads back, even though SmolLM2's tokenizer splits `<tool_call>` into
several ordinary tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

TEMPLATE = (
    Path(__file__).resolve().parents[2] / "configs" / "chat-templates" / "smollm2-tools.jinja"
)
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

SYSTEM = {"role": "system", "content": "You answer in one sentence."}
USER = {"role": "user", "content": "What's the weather in Paris?"}
ASSISTANT = {"role": "assistant", "content": "Sunny.\nAnything else?"}
FOLLOW_UP = {"role": "user", "content": "And {{ tomorrow }} <b>?</b>"}

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
TOOL_JSON = (
    '{"type": "function", "function": {"name": "get_weather", '
    '"description": "Current weather in a city", "parameters": {"type": "object", '
    '"properties": {"city": {"type": "string"}}, "required": ["city"]}}}'
)
ANSWER = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture(scope="module")
def tokenizer(demo_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model)


@pytest.fixture(scope="module")
def template() -> str:
    return TEMPLATE.read_text()


def render(
    tokenizer: Any, template: str | None, messages: list[dict[str, Any]], **kwargs: Any
) -> str:
    text: str = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, **kwargs
    )
    return text


def tool_call(name: str, arguments: str | dict[str, Any]) -> dict[str, Any]:
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}


@pytest.mark.parametrize(
    "messages",
    [
        [USER],
        [SYSTEM, USER],
        [USER, ASSISTANT],
        [SYSTEM, USER, ASSISTANT, FOLLOW_UP],
        [USER, ASSISTANT, FOLLOW_UP, {"role": "assistant", "content": ""}],
        [SYSTEM],
        [USER, SYSTEM, FOLLOW_UP],
    ],
)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_without_tools_it_renders_exactly_like_the_models_own_template(
    tokenizer: Any,
    template: str,
    messages: list[dict[str, Any]],
    add_generation_prompt: bool,
) -> None:
    own = render(tokenizer, None, messages, add_generation_prompt=add_generation_prompt)
    for tools in (None, []):
        ours = render(
            tokenizer, template, messages, tools=tools, add_generation_prompt=add_generation_prompt
        )
        assert ours == own


def test_tools_are_listed_after_the_default_system_prompt(tokenizer: Any, template: str) -> None:
    text = render(tokenizer, template, [USER], tools=TOOLS, add_generation_prompt=True)

    system, rest = text.split("<|im_end|>\n", 1)
    assert system.startswith(f"<|im_start|>system\n{DEFAULT_SYSTEM}\n\n# Tools\n")
    assert f"<tools>\n{TOOL_JSON}\n</tools>" in system
    assert (
        '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
        in system
    )
    assert (
        rest == "<|im_start|>user\nWhat's the weather in Paris?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_tool_fields_vllm_leaves_as_none_are_left_out(tokenizer: Any, template: str) -> None:
    # vLLM passes `tool.model_dump()`, which keeps unset fields as None.
    bare = {
        "type": "function",
        "function": {"name": "now", "description": None, "parameters": None},
    }
    text = render(tokenizer, template, [USER], tools=[bare])

    assert '<tools>\n{"type": "function", "function": {"name": "now"}}\n</tools>' in text


@pytest.mark.parametrize("role", ["system", "developer"])
def test_tools_are_merged_into_the_conversations_own_system_message(
    tokenizer: Any, template: str, role: str
) -> None:
    messages = [{"role": role, "content": "You answer in one sentence."}, USER]
    text = render(tokenizer, template, messages, tools=TOOLS)

    assert text.startswith("<|im_start|>system\nYou answer in one sentence.\n\n# Tools\n")
    assert text.count("<|im_start|>system") == 1
    assert DEFAULT_SYSTEM not in text
    assert TOOL_JSON in text


def test_a_developer_message_later_on_is_rendered_as_a_system_turn(
    tokenizer: Any, template: str
) -> None:
    text = render(tokenizer, template, [USER, {"role": "developer", "content": "Be brief."}])

    assert text.endswith("<|im_start|>system\nBe brief.<|im_end|>\n")


@pytest.mark.parametrize("arguments", ['{"city": "Paris"}', {"city": "Paris"}])
def test_tool_calls_without_content_and_grouped_tool_responses_render_hermes_style(
    tokenizer: Any, template: str, arguments: str | dict[str, Any]
) -> None:
    messages = [
        USER,
        {"role": "assistant", "content": None, "tool_calls": [tool_call("get_weather", arguments)]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "no rain"},
        {"role": "assistant", "content": "18C and sunny."},
    ]
    text = render(tokenizer, template, messages, tools=TOOLS)

    assert text.split("<|im_end|>\n", 2)[2] == (
        f"<|im_start|>assistant\n{ANSWER}<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n18C, sunny\n</tool_response>\n"
        "<tool_response>\nno rain\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n18C and sunny.<|im_end|>\n"
    )


def test_assistant_text_comes_before_its_tool_calls(tokenizer: Any, template: str) -> None:
    messages = [
        USER,
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [tool_call("get_weather", {})],
        },
    ]
    text = render(tokenizer, template, messages)

    assert text.endswith(
        "<|im_start|>assistant\nLet me check.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {}}\n</tool_call><|im_end|>\n'
    )


def test_a_legacy_function_message_renders_as_a_tool_response(
    tokenizer: Any, template: str
) -> None:
    messages = [USER, {"role": "function", "name": "get_weather", "content": "18C"}]
    text = render(tokenizer, template, messages)

    assert text.endswith("<|im_start|>user\n<tool_response>\n18C\n</tool_response><|im_end|>\n")


def test_text_content_parts_render_like_a_string(tokenizer: Any, template: str) -> None:
    parts = [{"type": "text", "text": "What's the weather"}, {"type": "text", "text": "in Paris?"}]
    text = render(tokenizer, template, [{"role": "user", "content": parts}])

    assert "<|im_start|>user\nWhat's the weather\nin Paris?<|im_end|>\n" in text


def test_the_hermes_parser_reads_back_a_call_answered_after_the_prompt(
    tokenizer: Any, template: str
) -> None:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser

    prompt = render(tokenizer, template, [USER], tools=TOOLS, add_generation_prompt=True)
    text = prompt + ANSWER
    request = ChatCompletionRequest.model_validate(
        {"model": "smollm2", "messages": [USER], "tools": TOOLS}
    )

    # vLLM hands the parser the generated text only: the prompt's own format example
    # (`<tool_call>` around non-JSON) would otherwise be parsed too.
    info = Hermes2ProToolParser(tokenizer).extract_tool_calls(text[len(prompt) :], request)

    assert info.tools_called
    assert [(c.function.name, json.loads(c.function.arguments)) for c in info.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert info.content is None


def test_the_hermes_parser_streams_a_call_whose_tags_span_several_tokens(tokenizer: Any) -> None:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.tool_parsers.hermes_tool_parser import Hermes2ProToolParser

    assert "<tool_call>" not in tokenizer.get_vocab()
    request = ChatCompletionRequest.model_validate(
        {"model": "smollm2", "messages": [USER], "tools": TOOLS}
    )
    parser = Hermes2ProToolParser(tokenizer)
    ids: list[int] = tokenizer.encode("Checking. " + ANSWER, add_special_tokens=False)
    content, arguments = "", ""
    names: list[str] = []
    previous = ""
    for end in range(1, len(ids) + 1):
        current: str = tokenizer.decode(ids[:end])
        delta = parser.extract_tool_calls_streaming(
            previous,
            current,
            current[len(previous) :],
            ids[: end - 1],
            ids[:end],
            ids[end - 1 : end],
            request,
        )
        previous = current
        if delta is None:
            continue
        content += delta.content or ""
        for call in delta.tool_calls:
            if call.function is None:
                continue
            if call.function.name:
                names.append(call.function.name)
            arguments += call.function.arguments or ""

    assert content == "Checking. "
    assert names == ["get_weather"]
    assert json.loads(arguments) == {"city": "Paris"}
