"""Client frameworks driving the gateway as their users write them: LangChain's
`ChatOpenAI` and the LiteLLM SDK. Runs in .clients-venv (their pins stay out of vLLM's
environment); prints one JSON object of what each scenario got back, for
tests/e2e/test_clients.py to check.

    .clients-venv/bin/python tests/clients/frameworks.py URL MODEL
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Literal

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no internet here

import litellm
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel


class City(BaseModel):
    name: Literal["Paris", "Lyon", "Nice"]
    country: Literal["France", "Italy"]


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"18 degrees and sunny in {city}"


ASK = "What is the weather in Paris?"


def langchain(url: str, model: str) -> dict[str, Any]:
    chat = ChatOpenAI(base_url=url + "/v1", api_key="unused", model=model, temperature=0,
                      max_tokens=48, max_retries=0)  # fmt: skip
    structured = chat.with_structured_output(City, method="json_schema")
    city = structured.invoke("Which city is the capital of France?")
    forced = chat.bind_tools([get_weather], tool_choice="get_weather")
    called = forced.invoke([HumanMessage(ASK)])
    # One agent step: run the tool, hand its answer back, let the model reply.
    turns = [HumanMessage(ASK), called]
    turns += [ToolMessage(get_weather.invoke(c["args"]), tool_call_id=c["id"])
              for c in called.tool_calls]  # fmt: skip
    reply = chat.bind_tools([get_weather]).invoke(turns)
    streamed = [c for c in forced.stream([HumanMessage(ASK)])]
    merged = streamed[0]
    for chunk in streamed[1:]:
        merged += chunk
    return {
        "structured": city.model_dump(),
        "tool_calls": [{"name": c["name"], "args": c["args"]} for c in called.tool_calls],
        "reply": {"content": reply.content, "tool_calls": len(reply.tool_calls)},
        "streamed_tool_calls": [{"name": c["name"], "args": c["args"]} for c in merged.tool_calls],
    }


def litellm_sdk(url: str, model: str) -> dict[str, Any]:
    common = {"api_base": url + "/v1", "api_key": "unused", "temperature": 0, "max_tokens": 48}
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "The current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}]  # fmt: skip
    called = litellm.completion(
        model=f"openai/{model}", messages=[{"role": "user", "content": ASK}], tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, **common,
    )  # fmt: skip
    structured = litellm.completion(
        model=f"openai/{model}", response_format=City,
        messages=[{"role": "user", "content": "Which city is the capital of France?"}], **common,
    )  # fmt: skip
    # hosted_vllm/ is LiteLLM's provider for vLLM servers: vLLM's extras go through as-is
    # (bad_words shows they arrived: the answer must do without "Paris").
    extras = litellm.completion(
        model=f"hosted_vllm/{model}", top_k=1, bad_words=["Paris"],
        messages=[{"role": "user", "content": "What is the capital of France?"}], **common,
    )  # fmt: skip
    stream = litellm.completion(
        model=f"openai/{model}", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "What is the capital of France?"}], **common,
    )  # fmt: skip
    pieces, streamed_usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        streamed_usage = getattr(chunk, "usage", None) or streamed_usage
    whole = litellm.completion(  # generated again, not the stream's cached answer
        model=f"openai/{model}", extra_headers={"Cache-Control": "no-cache"},
        messages=[{"role": "user", "content": "What is the capital of France?"}], **common,
    )  # fmt: skip
    call = called.choices[0].message.tool_calls[0]
    return {
        "tool_call": {"name": call.function.name, "args": json.loads(call.function.arguments)},
        "finish_reason": called.choices[0].finish_reason,
        "structured": json.loads(structured.choices[0].message.content),
        "extras": extras.choices[0].message.content,
        "usage": extras.usage.model_dump(include={"prompt_tokens", "completion_tokens"}),
        "streamed": {
            "text": "".join(pieces),
            "pieces": len(pieces),
            "completion_tokens": streamed_usage and streamed_usage.completion_tokens,
        },
        "whole": {
            "text": whole.choices[0].message.content,
            "completion_tokens": whole.usage.completion_tokens,
        },
    }


if __name__ == "__main__":
    url, model = sys.argv[1:3]
    print(json.dumps({"langchain": langchain(url, model), "litellm": litellm_sdk(url, model)}))
