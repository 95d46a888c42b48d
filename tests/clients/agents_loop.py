"""The OpenAI Agents SDK running an agent with one function tool against the gateway,
through its default model class (the Responses API), whole and streamed. Runs in
.agents-venv; prints one JSON object for tests/e2e/test_responses.py to check.

    .agents-venv/bin/python tests/clients/agents_loop.py URL MODEL
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from agents import (
    Agent,
    ModelSettings,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI

calls: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    calls.append(city)
    return f"18 degrees and sunny in {city}"


async def main(url: str, model: str) -> dict[str, Any]:
    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    agent = Agent(
        name="weather",
        instructions="You answer questions about the weather. Use the get_weather tool.",
        model=OpenAIResponsesModel(model=model, openai_client=client),
        tools=[get_weather],
        model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=64),
    )
    whole = await Runner.run(agent, "What is the weather in Paris?", max_turns=6)
    streamed = Runner.run_streamed(agent, "What is the weather in Nice?", max_turns=6)
    kinds = [event.type async for event in streamed.stream_events()]
    return {
        "tool_calls": len(calls),
        "final_output": str(whole.final_output),
        "streamed_final_output": str(streamed.final_output),
        "streamed_events": sorted(set(kinds)),
        "items": [item.type for item in whole.new_items],
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
