"""Parity with `vllm serve`, request by request.

Each row is sent at temperature 0 (or with a seed) to three targets: the gateway's
in-process vLLM engine, the gateway in front of a `vllm serve` of the same model
(`openai_remote`), and that `vllm serve` directly. All three must give the same text,
tool calls (name and arguments), finish reasons and token counts, or the same error
status. A row marked `divergence` is one where vLLM's server is wrong and the gateway
does better on both of its paths: the two gateway paths must still agree, and the
row's own check says what "better" is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
import jsonschema
import pytest

from tests.e2e.conftest import MODEL_ID, Gateway, VLLMServer

pytestmark = pytest.mark.vllm

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": WEATHER_PARAMETERS,
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time in a timezone",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
TOOL_TURNS = [
    *ASK,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"},
]


@dataclass(frozen=True)
class Row:
    id: str
    path: str
    body: dict[str, Any]
    divergence: str | None = None
    finish: str | None = None  # the finish reason the row is there to show


def chat(id: str, divergence: str | None = None, finish: str | None = None, **body: Any) -> Row:
    return Row(id, CHAT, {"messages": FRANCE, "max_tokens": 24, **body}, divergence, finish)


def completion(id: str, **body: Any) -> Row:
    return Row(id, COMPLETIONS, {"prompt": "The sky is", "max_tokens": 8, **body})


FORCED = (
    "vLLM 0.32 leaves a forced call's arguments free unless the tool says strict; the "
    "gateway pins them to the tool's parameters, so they parse as an object of its schema"
)
ROWS = [
    chat("plain"),
    chat("plain-streamed", stream=True, stream_options={"include_usage": True}),
    chat("length", max_tokens=3),
    chat("developer-role",
         messages=[{"role": "developer", "content": "Answer in one word."}, *FRANCE]),
    chat("text-parts", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is the capital"}, {"type": "text", "text": "of France?"}]}]),
    chat("tools-auto", messages=ASK, tools=[WEATHER, TIME], max_tokens=48),
    chat("tools-auto-streamed", messages=ASK, tools=[WEATHER, TIME], max_tokens=48, stream=True),
    chat("tools-none", messages=ASK, tools=[WEATHER], tool_choice="none"),
    chat("tools-required", FORCED, messages=ASK, tools=[WEATHER, TIME], tool_choice="required",
         max_tokens=48),
    chat("tools-named", FORCED, messages=ASK, tools=[WEATHER, TIME], max_tokens=48,
         tool_choice={"type": "function", "function": {"name": "get_weather"}}),
    chat("tools-named-streamed", FORCED, messages=ASK, tools=[WEATHER, TIME], max_tokens=48,
         tool_choice={"type": "function", "function": {"name": "get_weather"}}, stream=True),
    chat("tools-strict-required", messages=ASK, max_tokens=48, tool_choice="required",
         tools=[{"type": "function", "function": {**WEATHER["function"], "strict": True}}]),
    chat("tool-conversation", messages=TOOL_TURNS, tools=[WEATHER], max_tokens=32),
    chat("json-object", response_format={"type": "json_object"}, max_tokens=32),
    chat("json-schema-strict", max_tokens=40,
         messages=[{"role": "user", "content": "Invent a person."}],
         response_format={"type": "json_schema",
                          "json_schema": {"name": "person", "strict": True, "schema": PERSON}}),
    chat("choice", structured_outputs={"choice": ["Paris", "Lyon", "Nice"]}),
    chat("regex", structured_outputs={"regex": "[A-Z][a-z]+, [0-9]{4}"}),
    chat("grammar", structured_outputs={"grammar": 'root ::= "yes" | "no"'}),
    chat("top-k", temperature=1.0, seed=7, top_k=1),
    chat("min-p", temperature=1.0, seed=7, min_p=0.5),
    chat("repetition-penalty", repetition_penalty=1.5),
    chat("repetition-detection", finish="repetition", max_tokens=48,
         messages=[{"role": "user", "content": "Write the word yes fifty times."}],
         repetition_detection={"max_pattern_size": 4, "min_count": 3}),
    chat("logit-bias", logit_bias={"7042": -100}),  # 7042: " Paris" in SmolLM2's vocabulary
    chat("stop-token-ids", stop_token_ids=[30]),  # 30: "."
    chat("min-tokens-ignore-eos", max_tokens=12, min_tokens=12, ignore_eos=True),
    chat("banned-words", bad_words=["Paris"]),
    chat("n-two-seeded", n=2, temperature=0.9, seed=11),
    chat("n-two-tools-streamed", messages=ASK, tools=[WEATHER, TIME], max_tokens=48, n=2,
         temperature=0.9, seed=5, stream=True),
    chat("stop-string", stop=["Paris"], include_stop_str_in_output=True),
    completion("completion-stop-string", stop=[" blue"]),
    chat("continue-final", messages=[*FRANCE, {"role": "assistant", "content": "The capital is"}],
         add_generation_prompt=False, continue_final_message=True),
    chat("continue-final-echo", messages=[*FRANCE, {"role": "assistant", "content": "It is"}],
         add_generation_prompt=False, continue_final_message=True, echo=True),
    completion("completion"),
    completion("completion-echo", echo=True),
    completion("completion-token-ids", prompt=[504, 6376, 314]),  # "The sky is"
    completion("completion-token-batch", prompt=[[504, 6376, 314], [504, 3258, 314]]),
    completion("completion-text-batch", prompt=["The sky is", "Water is"]),
    completion("completion-logprobs", logprobs=2),
    completion("completion-prompt-logprobs", prompt_logprobs=1),
    chat("prompt-logprobs", prompt_logprobs=2),
    completion("completion-truncate", truncate_prompt_tokens=2),
    completion("completion-truncate-right", truncate_prompt_tokens=2, truncation_side="right"),
    completion("completion-allowed-tokens", allowed_token_ids=[28, 29, 30]),
    Row("no-max-tokens", CHAT, {"messages": FRANCE}),  # the gateway's default, fitted
    Row("no-max-tokens-streamed", CHAT, {"messages": FRANCE, "stream": True,
                                         "stream_options": {"include_usage": True}}),
    Row("completion-no-max-tokens", COMPLETIONS, {"prompt": "The sky is"}),
]  # fmt: skip
# Bad input: the same error status from all three, and a 400 naming the field.
BAD_ROWS = [
    chat("bad-named-tool-missing", messages=ASK, tools=[WEATHER],
         tool_choice={"type": "function", "function": {"name": "nope"}}),
    chat("bad-regex", structured_outputs={"regex": "[a-"}),
    chat("bad-grammar", structured_outputs={"grammar": "root ::= (("}),
    chat("bad-schema-type", response_format={"type": "json_schema",
                                             "json_schema": {"name": "x", "schema": {"type": 5}}}),
    chat("bad-top-logprobs", logprobs=True, top_logprobs=50),
    chat("bad-request-chat-template", chat_template="{{ messages[0]['content'] }}"),
    chat("bad-prompt-logprobs-streamed", prompt_logprobs=1, stream=True),
    chat("bad-context", messages=[{"role": "user", "content": "word " * 3000}]),
    completion("bad-context-completion", prompt="word " * 3000),
]  # fmt: skip
ROWS += BAD_ROWS


def _summary(response: httpx.Response, streamed: bool) -> dict[str, Any]:
    """What must agree: status; per choice text, tool calls, finish and stop reasons;
    usage."""
    if response.status_code != 200:
        return {"status": response.status_code}
    if streamed:
        return {"status": 200, **_reassembled(response.text)}
    body = response.json()
    choices = []
    for choice in sorted(body["choices"], key=lambda c: c["index"]):
        message = choice.get("message") or {}
        text = message.get("content") if "message" in choice else choice["text"]
        calls = [_call(c["function"]) for c in message.get("tool_calls") or ()]
        stops = choice["finish_reason"], choice.get("stop_reason")
        choices.append((text or "", calls, *stops, _prompt_logprobs(choice)))
    usage = body["usage"]
    summary = {"status": 200, "choices": choices, "usage": _usage(usage)}
    return {**summary, "prompt_logprobs": _prompt_logprobs(body)}


def _prompt_logprobs(where: dict[str, Any]) -> list[Any] | None:
    """vLLM's prompt logprobs: per prompt position, (token id, decoded, logprob). Ranks
    are left out: near-ties may swap them."""
    value = where.get("prompt_logprobs")
    if value is None:
        return None
    return [
        None if top is None else sorted(
            (token, p.get("decoded_token"), Logprob(p["logprob"])) for token, p in top.items()
        )
        for top in value
    ]  # fmt: skip


@dataclass(frozen=True, eq=False)
class Logprob:
    """Equal to another within 1e-3: the same weights in another process may batch the
    prompt differently, and rounding would still flip values near an edge."""

    value: float

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Logprob) and abs(self.value - other.value) < 1e-3

    def __repr__(self) -> str:
        return f"{self.value:.5f}"


def _reassembled(sse: str) -> dict[str, Any]:
    texts: dict[int, list[str]] = {}
    calls: dict[int, dict[int, dict[str, str]]] = {}
    finish: dict[int, tuple[str, Any]] = {}
    usage = None
    for line in sse.splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[6:])
        assert "error" not in event, event
        usage = event.get("usage") or usage
        for choice in event["choices"]:
            i = choice["index"]
            delta = choice.get("delta") or {"content": choice.get("text")}
            texts.setdefault(i, []).append(delta.get("content") or "")
            for call in delta.get("tool_calls") or ():
                slot = calls.setdefault(i, {}).setdefault(
                    call["index"], {"name": "", "arguments": ""}
                )
                slot["name"] += (call.get("function") or {}).get("name") or ""
                slot["arguments"] += (call.get("function") or {}).get("arguments") or ""
            if choice.get("finish_reason"):
                finish[i] = (choice["finish_reason"], choice.get("stop_reason"))
    choices = [
        (
            "".join(texts[i]),
            [_call(c) for _, c in sorted(calls.get(i, {}).items())],
            *finish.get(i, (None, None)),
        )
        for i in sorted(texts)
    ]
    return {"choices": choices, "usage": _usage(usage) if usage else None}


def _call(function: dict[str, Any]) -> tuple[str, Any]:
    try:
        arguments = json.loads(function["arguments"])
    except (TypeError, ValueError):
        arguments = function["arguments"]
    return function["name"], arguments


def _usage(usage: dict[str, Any]) -> tuple[int, int, int, bool]:
    """The counts, and whether prompt_tokens_details came (its cached_tokens depends
    on what each server's prefix cache holds: test_cached_prompt_tokens checks it)."""
    details = isinstance(usage.get("prompt_tokens_details"), dict)
    return usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"], details


def _ask(url: str, row: Row) -> tuple[dict[str, Any], str | None]:
    """The answer's summary, and the `param` its error names (None without error)."""
    body = {"model": MODEL_ID, "temperature": 0, **row.body}
    response = httpx.post(url + row.path, json=body, timeout=180)
    summary = _summary(response, bool(body.get("stream")))
    if response.status_code == 200:
        return summary, None
    error = response.json()["error"]  # OpenAI-shaped on all three
    assert error["message"], response.text
    return summary, error["param"]


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_parity_with_vllm_serve(
    row: Row, gateway: Gateway, remote_gateway: str, vllm_server: VLLMServer
) -> None:
    in_process, param = _ask(gateway.url, row)
    remote, remote_param = _ask(remote_gateway, row)
    direct, _ = _ask(vllm_server.url, row)
    assert in_process == remote, "the gateway's two engine paths disagree"
    if row.finish is not None:
        assert {choice[2] for choice in direct["choices"]} == {row.finish}, direct
    if row in BAD_ROWS:
        assert in_process["status"] == 400
        assert param is not None, "the gateway's 400 names no field"
        assert remote_param == param
    if row.divergence is None:
        assert in_process == direct, "the gateway differs from vllm serve"
        return
    # A known upstream divergence: the gateway's forced calls are objects of the schema,
    # and vllm serve's really are not (once they are, the row's divergence goes).
    assert direct != in_process, f"vllm serve agrees now: drop {row.id}'s divergence"
    assert in_process["status"] == 200
    for _, calls, *_ in in_process["choices"]:
        assert calls, in_process
        for name, arguments in calls:
            assert name == "get_weather"
            jsonschema.validate(arguments, WEATHER_PARAMETERS)


def test_rows_cover_every_group() -> None:
    assert len(ROWS) >= 25
    assert len(BAD_ROWS) >= 5


PREFIX = "The quick brown fox jumps over the lazy dog, and the dog sleeps on. " * 30


def _cached(url: str, path: str, body: dict[str, Any]) -> tuple[int, int | None]:
    """(prompt tokens, cached prompt tokens) of one answer, whole or streamed."""
    response = httpx.post(url + path, json={"model": MODEL_ID, **body}, timeout=180)
    assert response.status_code == 200, response.text
    if body.get("stream"):
        events = [json.loads(line[6:]) for line in response.text.splitlines()
                  if line.startswith("data: {")]  # fmt: skip
        usage = next(e["usage"] for e in reversed(events) if e.get("usage"))
    else:
        usage = response.json()["usage"]
    if path == "/v1/responses":
        return usage["input_tokens"], usage["input_tokens_details"]["cached_tokens"]
    return usage["prompt_tokens"], (usage.get("prompt_tokens_details") or {}).get("cached_tokens")


def test_cached_prompt_tokens(
    gateway: Gateway, remote_gateway: str, vllm_server: VLLMServer
) -> None:
    """With `--enable-prompt-tokens-details` (`enable_prompt_tokens_details` in process),
    a prompt that shares a long prefix with an earlier one reports the prefix vLLM
    found in its cache as usage.prompt_tokens_details.cached_tokens, whole and
    streamed, on both gateway paths as on `vllm serve`; the Responses API says it as
    input_tokens_details.cached_tokens."""
    first = {"max_tokens": 1, "temperature": 0}
    for url in (vllm_server.url, remote_gateway, gateway.url):
        ask = [{"role": "user", "content": PREFIX + url}]
        _cached(url, CHAT, {**first, "messages": ask})  # fills the prefix cache
        for extra in ({}, {"stream": True, "stream_options": {"include_usage": True}}):
            more = [
                *ask,
                {"role": "assistant", "content": "Yes."},
                {"role": "user", "content": str(extra)},
            ]
            prompt, cached = _cached(url, CHAT, {**first, **extra, "messages": more})
            assert cached is not None, (url, extra)
            assert 0 < cached < prompt, (url, extra, prompt, cached)
        _cached(url, COMPLETIONS, {**first, "prompt": PREFIX + url})
        prompt, cached = _cached(url, COMPLETIONS, {**first, "prompt": PREFIX + url + " again"})
        assert cached is not None, url
        assert 0 < cached < prompt, (url, prompt, cached)
    prompt, cached = _cached(
        gateway.url, "/v1/responses", {"input": PREFIX + gateway.url + "?", "max_output_tokens": 16}
    )
    assert 0 < cached < prompt
