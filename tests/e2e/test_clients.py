"""Today's clients against the gateway's in-process vLLM engine, written as their users
write them: the OpenAI SDK's `parse` and stream helpers and an agent's tool loop here;
LangChain and the LiteLLM SDK from their own environment (tests/clients/frameworks.py)."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Literal

import pytest
from openai import OpenAI, pydantic_function_tool
from pydantic import BaseModel

from tests.build_venv import ROOT
from tests.e2e.conftest import MODEL_ID, Gateway

pytestmark = pytest.mark.vllm

CLIENTS = ROOT / ".clients-venv" / "bin" / "python"
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


class City(BaseModel):
    name: Literal["Paris", "Lyon", "Nice"]
    country: Literal["France", "Italy"]


class GetWeather(BaseModel):
    """The current weather in a city."""

    city: str


def test_parse_returns_the_pydantic_model(client: OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Which city is the capital of France?"}],
        response_format=City,
        temperature=0,
        max_tokens=48,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, City)
    assert completion.choices[0].finish_reason == "stop"


def test_streamed_required_call_reassembles_into_parsed_arguments(client: OpenAI) -> None:
    with client.chat.completions.stream(
        model=MODEL_ID,
        messages=ASK,  # type: ignore[arg-type]
        tools=[pydantic_function_tool(GetWeather)],
        tool_choice="required",
        temperature=0,
        max_tokens=48,
    ) as stream:
        argument_deltas = [e for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls or []
    assert call.function.name == "GetWeather"
    assert isinstance(call.function.parsed_arguments, GetWeather)
    assert len(argument_deltas) > 1, "the arguments came whole, not streamed"
    assert final.choices[0].finish_reason == "tool_calls"


def test_agent_loop_hands_tool_results_back(client: OpenAI) -> None:
    """The loop every agent framework runs: call, run the tool, send its result back as a
    `tool` message after the assistant turn (content null, tool_calls), ask again."""
    tools = [pydantic_function_tool(GetWeather)]
    messages: list[Any] = list(ASK)
    first = client.chat.completions.create(
        model=MODEL_ID, messages=messages, tools=tools, tool_choice="required", temperature=0
    )
    turn = first.choices[0].message
    assert turn.content is None
    assert turn.tool_calls
    messages.append(turn.model_dump(exclude_none=True))
    for call in turn.tool_calls:
        city = json.loads(call.function.arguments)["city"]  # type: ignore[union-attr]
        messages.append({"role": "tool", "tool_call_id": call.id, "content": f"18 C in {city}"})
    second = client.chat.completions.create(
        model=MODEL_ID, messages=messages, tools=tools, tool_choice="none", temperature=0
    )
    assert second.choices[0].message.content
    assert second.choices[0].message.tool_calls in (None, [])
    assert first.usage is not None
    assert second.usage is not None
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + 10  # the turns were sent


@pytest.fixture(scope="module")
def frameworks(gateway: Gateway) -> dict[str, Any]:
    if not CLIENTS.is_file():
        pytest.fail(f"{CLIENTS} is missing: run `make test`, which creates it.")
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "NO_PROXY": "127.0.0.1"}
    done = subprocess.run(
        [str(CLIENTS), str(ROOT / "tests" / "clients" / "frameworks.py"), gateway.url, MODEL_ID],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_langchain_structured_output_and_tools(frameworks: dict[str, Any]) -> None:
    got = frameworks["langchain"]
    City.model_validate(got["structured"])
    for calls in (got["tool_calls"], got["streamed_tool_calls"]):
        assert [c["name"] for c in calls] == ["get_weather"]
        assert isinstance(calls[0]["args"]["city"], str)
    assert got["streamed_tool_calls"] == got["tool_calls"]
    assert got["reply"]["content"] or got["reply"]["tool_calls"]


def test_litellm_sdk_tools_structured_output_streams_and_vllm_extras(
    frameworks: dict[str, Any],
) -> None:
    got = frameworks["litellm"]
    assert got["tool_call"]["name"] == "get_weather"
    assert isinstance(got["tool_call"]["args"]["city"], str)
    City.model_validate(got["structured"])
    assert "Paris" in got["whole"]["text"]  # what the question gets unbanned...
    assert got["extras"]
    assert "Paris" not in got["extras"]  # ...and with bad_words, which reached vLLM
    assert got["usage"]["prompt_tokens"] > 5
    assert got["usage"]["completion_tokens"] > 0
    streamed, whole = got["streamed"], got["whole"]
    assert streamed["pieces"] > 1
    assert streamed["text"] == whole["text"]
    assert streamed["completion_tokens"] == whole["completion_tokens"]
