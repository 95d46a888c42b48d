"""The Responses API on the real vLLM engine (the demo model), driven by OpenAI's SDK and
the OpenAI Agents SDK; conversation state shared by two gateway processes through one
real redis-server; parity of stateless requests with `vllm serve`'s own /v1/responses."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel

from gateway.bench.process import answers, gateway_command, server_process
from tests.build_venv import ROOT
from tests.e2e.conftest import MODEL_ID, Gateway, VLLMServer
from tests.redis_server import RedisServer
from tests.servers import free_port

pytestmark = pytest.mark.vllm

AGENTS = ROOT / ".agents-venv" / "bin" / "python"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
ASK = "What is the weather in Paris?"


class City(BaseModel):
    name: Literal["Paris", "Lyon", "Nice"]
    country: Literal["France", "Italy"]


def test_text_answer(client: OpenAI) -> None:
    response = client.responses.create(
        model=MODEL_ID, input="What is the capital of France?", temperature=0, max_output_tokens=24
    )
    assert "Paris" in response.output_text
    assert response.status in ("completed", "incomplete")
    assert response.usage is not None
    assert response.usage.input_tokens > 10


def test_json_schema_format_parses(client: OpenAI) -> None:
    response = client.responses.parse(
        model=MODEL_ID,
        input="Which city is the capital of France?",
        text_format=City,
        temperature=0,
        max_output_tokens=48,
    )
    assert isinstance(response.output_parsed, City)


def test_stream_events_give_the_whole_answer(client: OpenAI) -> None:
    ask: dict[str, Any] = {
        "model": MODEL_ID,
        "input": "Name three colours.",
        "temperature": 0,
        "max_output_tokens": 20,
        "extra_headers": {"Cache-Control": "no-cache"},  # generated, not replayed
    }
    with client.responses.stream(**ask) as stream:
        events = list(stream)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    last = events[-1]  # OpenAI ends a stream cut by max_output_tokens with .incomplete
    assert last.type in ("response.completed", "response.incomplete")
    whole = client.responses.create(**ask)
    assert len(deltas) > 1
    assert "".join(deltas) == whole.output_text == last.response.output_text
    assert last.response.status == whole.status


def test_function_tool_round_trip(client: OpenAI) -> None:
    first = client.responses.create(
        model=MODEL_ID,
        input=ASK,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        temperature=0,
        max_output_tokens=48,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls, first.output
    call = calls[0]
    assert call.name == "get_weather"
    assert isinstance(json.loads(call.arguments), dict)
    second = client.responses.create(
        model=MODEL_ID,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18 C, sunny"}],
        tools=[WEATHER],  # type: ignore[list-item]
        temperature=0,
        max_output_tokens=32,
    )
    assert second.previous_response_id == first.id
    assert second.output_text
    assert first.usage is not None
    assert second.usage is not None
    # The stored conversation (question, call, its output) is in the second prompt.
    assert second.usage.input_tokens > first.usage.input_tokens
    items = client.responses.input_items.list(second.id)
    assert [item.type for item in items.data] == ["function_call_output"]
    assert client.responses.retrieve(second.id).output_text == second.output_text
    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)


def test_built_in_tools_are_refused_by_name(gateway: Gateway) -> None:
    body = {"model": MODEL_ID, "input": "hi", "tools": [{"type": "web_search_preview"}]}
    r = httpx.post(gateway.url + "/v1/responses", json=body, timeout=30)
    assert r.status_code == 400
    assert "web_search_preview" in r.json()["error"]["message"]


def test_agents_sdk_completes_its_loop(gateway: Gateway) -> None:
    if not AGENTS.is_file():
        pytest.fail(f"{AGENTS} is missing: run `make test`, which creates it.")
    script = ROOT / "tests" / "clients" / "agents_loop.py"
    done = subprocess.run(
        [str(AGENTS), str(script), gateway.url, MODEL_ID],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OPENAI_AGENTS_DISABLE_TRACING": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["tool_calls"] >= 1, got  # the agent called its tool and read the answer
    assert isinstance(got["final_output"], str)


# -- conversation state shared by gateway replicas -------------------------------------

KEYS = {"ALICE_KEY": "sk-alice-responses", "BOB_KEY": "sk-bob-responses"}


@pytest.fixture(scope="module")
def replicas(
    gateway: Gateway,
    vllm_server: VLLMServer,
    session_redis: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[str]]:
    """Two `switchyard serve` processes sharing one response store on redis-server: the
    first in front of `vllm serve`, the second in front of the in-process gateway."""
    work = tmp_path_factory.mktemp("replicas")
    keys = [
        {"label": name.split("_")[0].lower(), "key_env": name, "models": ["*"]} for name in KEYS
    ]
    settings = {
        "responses": {"backend": "redis", "redis_url": session_redis.url},
        "auth": {"enabled": True, "keys": keys},
    }
    env = {**os.environ, **KEYS}
    auth = {"Authorization": f"Bearer {KEYS['ALICE_KEY']}"}
    urls = []
    with contextlib.ExitStack() as stack:
        for name, upstream in (("a", vllm_server.url), ("b", gateway.url)):
            port = free_port()
            engine = {"name": name, "kind": "openai_remote", "model_id": MODEL_ID}
            engine["options"] = {"url": upstream}
            command = gateway_command([engine], port, work, **settings)
            url = f"http://127.0.0.1:{port}"
            log = work / f"gateway-{name}.log"
            stack.enter_context(server_process(command, answers(url, MODEL_ID, auth), log, env))
            urls.append(url)
        yield urls


def _client(url: str, key: str) -> OpenAI:
    return OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def test_a_conversation_alternates_between_replicas(replicas: list[str]) -> None:
    a, b = (_client(url, KEYS["ALICE_KEY"]) for url in replicas)
    turn = a.responses.create(
        model=MODEL_ID, input="My name is Ada. Remember it.", temperature=0, max_output_tokens=16
    )
    sizes = []
    for client, text in ((b, "What is my name?"), (a, "Say it again."), (b, "Once more.")):
        turn = client.responses.create(
            model=MODEL_ID,
            previous_response_id=turn.id,
            input=text,
            temperature=0,
            max_output_tokens=16,
        )
        assert turn.usage is not None
        sizes.append(turn.usage.input_tokens)
    assert sizes == sorted(sizes)  # each turn carries the last
    assert len(set(sizes)) == 3
    assert a.responses.retrieve(turn.id).id == turn.id  # written by b, read through a


def test_another_key_cannot_read_it(replicas: list[str]) -> None:
    alice = _client(replicas[0], KEYS["ALICE_KEY"])
    bob = _client(replicas[1], KEYS["BOB_KEY"])
    mine = alice.responses.create(model=MODEL_ID, input="A secret.", max_output_tokens=4)
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.create(model=MODEL_ID, previous_response_id=mine.id, input="Tell me.")
    with pytest.raises(openai.NotFoundError):
        bob.responses.delete(mine.id)
    assert alice.responses.retrieve(mine.id).id == mine.id


# -- parity with vllm serve ----------------------------------------------------------------

PARITY: list[dict[str, Any]] = [
    {"input": "What is the capital of France?"},
    {"input": "Name a colour.", "instructions": "Answer in one word."},
    {
        "input": [
            {"role": "user", "content": "Hi, I am Ada."},
            {"role": "assistant", "content": "Hello Ada!"},
            {"role": "user", "content": [{"type": "input_text", "text": "Who am I?"}]},
        ]
    },
    {"input": ASK, "tools": [WEATHER], "tool_choice": "auto"},
    {
        "input": "Which city is the capital of France? Answer in JSON.",
        "text": {
            "format": {"type": "json_schema", "name": "city", "schema": City.model_json_schema()}
        },
    },
]


def _summary(body: dict[str, Any]) -> dict[str, Any]:
    items = []
    for item in body["output"]:
        if item["type"] == "message":
            items.append(("message", "".join(part["text"] for part in item["content"])))
        elif item["type"] == "function_call":
            items.append(("function_call", item["name"], json.loads(item["arguments"])))
    usage = body["usage"]
    return {
        "status": body["status"],
        "output": items,
        "usage": (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]),
    }


@pytest.mark.parametrize("row", PARITY, ids=["text", "instructions", "messages", "tool", "schema"])
def test_parity_with_vllm_serve(
    row: dict[str, Any], gateway: Gateway, remote_gateway: str, vllm_server: VLLMServer
) -> None:
    body = {"model": MODEL_ID, "temperature": 0, "max_output_tokens": 40, "store": False, **row}
    reference = httpx.post(vllm_server.url + "/v1/responses", json=body, timeout=120)
    assert reference.status_code == 200, reference.text
    expected = _summary(reference.json())
    for url in (gateway.url, remote_gateway):
        got = httpx.post(url + "/v1/responses", json=body, timeout=120)
        assert got.status_code == 200, got.text
        assert _summary(got.json()) == expected, url


def test_required_tool_choice_where_vllm_serve_differs(
    gateway: Gateway, vllm_server: VLLMServer
) -> None:
    """Divergence, on purpose: `vllm serve`'s /v1/responses (0.32, non-harmony models)
    answers `tool_choice: "required"` with the tool-call markup as message text, while
    its chat endpoint constrains the output to a call. The gateway runs the chat path,
    so the same request gives a `function_call` item."""
    body = {"model": MODEL_ID, "input": ASK, "tools": [WEATHER], "tool_choice": "required"}
    body |= {"temperature": 0, "max_output_tokens": 40, "store": False}
    reference = httpx.post(vllm_server.url + "/v1/responses", json=body, timeout=120)
    ours = httpx.post(gateway.url + "/v1/responses", json=body, timeout=120)
    assert [kind for kind, *_ in _summary(reference.json())["output"]] == ["message"]
    assert [kind for kind, *_ in _summary(ours.json())["output"]] == ["function_call"]
