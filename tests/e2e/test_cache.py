"""The response cache in front of the real vLLM engine, stored in the session's real
redis-server: a streamed hit replays vLLM's chunk sequence exactly, with usage; 20
identical concurrent requests make one generation (counted inside vLLM); an adapter
reloaded with other weights under the same name misses; Redis killed mid-test fails
nothing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import redis
from openai import AsyncOpenAI

from tests.e2e.conftest import MODEL_ID, Gateway, engine_calls
from tests.servers import wait_until

pytestmark = pytest.mark.vllm

BODY = {
    "model": MODEL_ID,
    "messages": [{"role": "user", "content": "Name three colors of the rainbow."}],
    "temperature": 0,
    "max_tokens": 24,
}


@pytest.fixture(autouse=True)
def empty_cache(gateway: Gateway) -> None:
    redis.Redis.from_url(gateway.redis.url).flushall()


def stream(gateway: Gateway, body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
        timeout=120,
    ) as r:
        assert r.status_code == 200
        data = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return r.headers["x-switchyard-cache"], [json.loads(d) for d in data[:-1]]


def post(gateway: Gateway, body: dict[str, Any]) -> httpx.Response:
    r = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])


def test_streamed_hit_replays_the_chunk_sequence_with_usage(gateway: Gateway) -> None:
    with engine_calls(gateway.engine) as calls:
        first, recorded = stream(gateway, BODY)
        second, replayed = stream(gateway, BODY)
    assert (first, second) == ("miss", "hit")
    assert len(calls.started) == 1  # the hit made no generation in vLLM
    strip = [{k: v for k, v in e.items() if k not in ("id", "created")} for e in recorded]
    assert [{k: v for k, v in e.items() if k not in ("id", "created")} for e in replayed] == strip
    assert recorded[0]["id"] != replayed[0]["id"]
    assert len(recorded) > 5  # one event per token, as vLLM produced them
    assert replayed[-1]["usage"] == recorded[-1]["usage"]
    assert replayed[-1]["usage"]["completion_tokens"] > 0
    plain = post(gateway, BODY)  # and the same answer as one JSON body
    assert plain.headers["x-switchyard-cache"] == "hit"
    assert plain.json()["choices"][0]["message"]["content"] == text_of(recorded)
    assert plain.json()["usage"] == recorded[-1]["usage"]


async def test_twenty_identical_concurrent_requests_generate_once(gateway: Gateway) -> None:
    """One generation inside vLLM (counted at its AsyncLLM.generate), followed by all."""
    before = gateway.lookups()
    client = AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    body = {**BODY, "max_tokens": 48}

    async def ask(i: int) -> str:
        if i % 2:
            chunks = await client.chat.completions.create(**body, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
        r = await client.chat.completions.create(**body)
        return r.choices[0].message.content or ""

    with engine_calls(gateway.engine) as calls:
        answers = await asyncio.gather(*(ask(i) for i in range(20)))
    await client.close()
    assert len(calls.started) == 1, calls  # one generation in the engine
    assert not calls.aborted
    after = gateway.lookups()
    assert after["miss"] - before["miss"] == 1
    assert after["hit"] - before["hit"] == 19
    assert len(set(answers)) == 1
    assert answers[0]


def test_an_adapter_reloaded_with_other_weights_misses(gateway: Gateway) -> None:
    def load(path: str) -> None:
        r = httpx.post(
            gateway.url + "/v1/adapters", json={"name": "swapped", "path": path}, timeout=120
        )
        assert r.status_code == 200, r.text

    body = {**BODY, "model": "swapped", "max_tokens": 48}
    load("shout")
    shouted = post(gateway, body)
    assert shouted.headers["x-switchyard-cache"] == "miss"
    assert post(gateway, body).headers["x-switchyard-cache"] == "hit"
    load("json")  # same name, other weights
    try:
        answered = post(gateway, body)
        assert answered.headers["x-switchyard-cache"] == "miss"
        a = shouted.json()["choices"][0]["message"]["content"]
        b = answered.json()["choices"][0]["message"]["content"]
        assert a != b
        assert b.lstrip().startswith("{")
    finally:
        httpx.delete(gateway.url + "/v1/adapters/swapped", timeout=120)


def test_redis_killed_mid_test_fails_nothing(gateway: Gateway) -> None:
    post(gateway, BODY)
    assert post(gateway, BODY).headers["x-switchyard-cache"] == "hit"
    gateway.redis.stop()
    try:
        for _ in range(3):
            assert post(gateway, BODY).headers["x-switchyard-cache"] == "miss"
    finally:
        gateway.redis.start()
    assert wait_until(lambda: post(gateway, BODY).headers["x-switchyard-cache"] == "hit", 30)


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TOOL_CALL = {
    **BODY,
    "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
    "tools": [WEATHER],
    "tool_choice": "required",
    "max_tokens": 48,
}
PERSON = {
    "type": "json_schema",
    "json_schema": {
        "name": "person",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
        },
    },
}
JSON_ANSWER = {**BODY, "response_format": PERSON, "max_tokens": 64}


def _without_ids(events: list[dict[str, Any]]) -> list[Any]:
    return [(e["choices"], e.get("usage")) for e in events]


@pytest.mark.parametrize("body", [TOOL_CALL, JSON_ANSWER], ids=["tool-call", "json-schema"])
def test_tool_calls_and_json_answers_replay_exactly_either_way_round(
    gateway: Gateway, body: dict[str, Any]
) -> None:
    first = post(gateway, body)
    assert first.headers["x-switchyard-cache"] == "miss"
    again = post(gateway, body)
    assert again.headers["x-switchyard-cache"] == "hit"
    assert again.json()["choices"] == first.json()["choices"]
    assert again.json()["usage"] == first.json()["usage"]
    if body is TOOL_CALL:
        (call,) = first.json()["choices"][0]["message"]["tool_calls"]
        assert json.loads(call["function"]["arguments"])["city"]
    elif first.json()["choices"][0]["finish_reason"] == "stop":  # not cut by max_tokens
        assert set(json.loads(first.json()["choices"][0]["message"]["content"])) >= {"name"}
    # A hit recorded whole, replayed as a stream, says the same; and a streamed
    # recording replays as the same stream.
    result, events = stream(gateway, body)
    assert result == "hit"
    message = first.json()["choices"][0]["message"]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == (message["content"] or "")
    streamed_calls = [
        c for e in events if e["choices"] for c in e["choices"][0]["delta"].get("tool_calls") or ()
    ]
    if message.get("tool_calls"):
        assert streamed_calls[0]["id"] == message["tool_calls"][0]["id"]
        arguments = "".join(c["function"]["arguments"] for c in streamed_calls)
        assert arguments == message["tool_calls"][0]["function"]["arguments"]
    redis.Redis.from_url(gateway.redis.url).flushall()
    recorded = stream(gateway, body)
    replayed = stream(gateway, body)
    assert (recorded[0], replayed[0]) == ("miss", "hit")
    assert _without_ids(replayed[1]) == _without_ids(recorded[1])


def test_requests_differing_only_in_tools_or_response_format_never_share_an_entry(
    gateway: Gateway,
) -> None:
    variants = [
        TOOL_CALL,
        {**TOOL_CALL, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        {**TOOL_CALL, "tools": [WEATHER, {**WEATHER, "function": {"name": "get_time"}}]},
        {k: v for k, v in TOOL_CALL.items() if k not in ("tools", "tool_choice")},
        JSON_ANSWER,
        {**JSON_ANSWER, "response_format": {"type": "json_object"}},
        {**JSON_ANSWER, "top_k": 5},
    ]
    for body in variants:
        assert post(gateway, body).headers["x-switchyard-cache"] == "miss", body
