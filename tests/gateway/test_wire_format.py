"""OpenAI's wire format, to the letter, against the scripted engine on a live server."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from engines.scripted import ScriptedEngine

CHAT = "/v1/chat/completions"
HELLO = {"model": "scripted", "messages": [{"role": "user", "content": "say hi"}]}


def events(response: httpx.Response) -> list[Any]:
    """Parse an SSE body into JSON payloads, with "[DONE]" kept as a string."""
    out: list[Any] = []
    for block in response.text.split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_chat_completion_body(base_url: str) -> None:
    r = httpx.post(base_url + CHAT, json={**HELLO, "temperature": 0})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "scripted"
    assert isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "The scripted engine says hello to you."
    assert choice["finish_reason"] == "stop"
    assert choice["logprobs"] is None
    usage = body["usage"]
    assert usage["completion_tokens"] == 7
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_stream_chunks(base_url: str) -> None:
    body = {**HELLO, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    r = httpx.post(base_url + CHAT, json=body)
    assert r.headers["content-type"].startswith("text/event-stream")
    *chunks, usage_chunk, done = events(r)
    assert done == "[DONE]"
    assert {c["id"] for c in [*chunks, usage_chunk]} == {chunks[0]["id"]}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    first, *middle, last = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert all(c["usage"] is None for c in chunks)
    text = "".join(c["choices"][0]["delta"]["content"] for c in middle)
    assert text == "The scripted engine says hello to you."
    assert all(c["choices"][0]["finish_reason"] is None for c in middle)
    assert last["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 7


def test_stream_without_usage_has_no_usage_key(base_url: str) -> None:
    r = httpx.post(base_url + CHAT, json={**HELLO, "stream": True})
    chunks = events(r)[:-1]
    assert all("usage" not in c for c in chunks)


def test_n_choices_stream_have_their_own_index(base_url: str) -> None:
    body = {**HELLO, "n": 3, "seed": 7, "stream": True}
    chunks = events(httpx.post(base_url + CHAT, json=body))[:-1]
    texts: dict[int, str] = {0: "", 1: "", 2: ""}
    finishes = {}
    roles = set()
    for chunk in chunks:
        for choice in chunk["choices"]:
            delta = choice["delta"]
            if delta.get("role"):
                roles.add(choice["index"])
            texts[choice["index"]] += delta.get("content") or ""
            if choice["finish_reason"]:
                finishes[choice["index"]] = choice["finish_reason"]
    assert roles == {0, 1, 2}
    assert finishes == {0: "stop", 1: "stop", 2: "stop"}
    # Each choice is its own shuffle of the same words: same characters, any order.
    reply = "The scripted engine says hello to you."
    assert all(sorted(t) == sorted(reply) for t in texts.values())


def test_seed_repeats_and_max_tokens_cut(base_url: str) -> None:
    body = {**HELLO, "temperature": 1.0, "seed": 11, "max_tokens": 4}
    first = httpx.post(base_url + CHAT, json=body).json()
    second = httpx.post(base_url + CHAT, json=body).json()
    assert first["choices"][0]["message"] == second["choices"][0]["message"]
    assert first["choices"][0]["finish_reason"] == "length"
    assert first["usage"]["completion_tokens"] == 4


def test_stop_sequence_is_cut_and_not_included(base_url: str) -> None:
    body = {**HELLO, "temperature": 0, "stop": ["hello"]}
    choice = httpx.post(base_url + CHAT, json=body).json()["choices"][0]
    assert choice["message"]["content"] == "The scripted engine says "
    assert choice["finish_reason"] == "stop"


def test_chat_logprobs_shape(base_url: str) -> None:
    body = {**HELLO, "temperature": 0, "logprobs": True, "top_logprobs": 2}
    choice = httpx.post(base_url + CHAT, json=body).json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == choice["message"]["content"]
    for token in content:
        assert set(token) == {"token", "logprob", "bytes", "top_logprobs"}
        assert token["bytes"] == list(token["token"].encode())
        assert len(token["top_logprobs"]) == 2


def test_completions_batch_and_logprobs(base_url: str) -> None:
    body = {"model": "scripted", "prompt": ["a", "b"], "n": 2, "logprobs": 1, "max_tokens": 3}
    r = httpx.post(base_url + "/v1/completions", json=body).json()
    assert r["object"] == "text_completion"
    assert [c["index"] for c in r["choices"]] == [0, 1, 2, 3]
    for choice in r["choices"]:
        lp = choice["logprobs"]
        assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"]) == 3
        assert "".join(lp["tokens"]) == choice["text"]
        assert lp["text_offset"][0] == 0
    assert r["usage"]["completion_tokens"] == 12


def test_completions_stream(base_url: str) -> None:
    body = {"model": "scripted", "prompt": "x", "max_tokens": 2, "stream": True, "temperature": 0}
    *chunks, done = events(httpx.post(base_url + "/v1/completions", json=body))
    assert done == "[DONE]"
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "The scripted"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_request_id_is_echoed(base_url: str) -> None:
    r = httpx.post(base_url + CHAT, json=HELLO, headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert r.json()["id"] == "chatcmpl-abc-123"
    r = httpx.post(base_url + CHAT, json=HELLO, headers={"x-request-id": "bad id; x"})
    assert r.headers["x-request-id"] != "bad id; x"


def test_unknown_fields_are_ignored(base_url: str) -> None:
    r = httpx.post(base_url + CHAT, json={**HELLO, "made_up_field": {"x": 1}, "store": True})
    assert r.status_code == 200


def test_text_content_parts(base_url: str) -> None:
    msg = {
        "role": "user",
        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
    }
    r = httpx.post(base_url + CHAT, json={"model": "scripted", "messages": [msg]})
    assert r.status_code == 200


@pytest.mark.parametrize(
    "engine", [ScriptedEngine("s", "scripted", ScriptedEngine.Config(reply=None))]
)
def test_echo_reply_uses_last_user_message(base_url: str) -> None:
    body = {
        "model": "scripted",
        "temperature": 0,
        "messages": [{"role": "user", "content": "first"}, {"role": "user", "content": "last one"}],
    }
    r = httpx.post(base_url + CHAT, json=body).json()
    assert r["choices"][0]["message"]["content"] == "last one"
