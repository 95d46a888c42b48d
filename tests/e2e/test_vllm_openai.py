"""The official OpenAI SDK against a live gateway running the real in-process vLLM
engine on SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import pytest
from openai import BadRequestError, NotFoundError, OpenAI

from tests.e2e.conftest import MODEL_ID, EngineCalls, Gateway, engine_calls
from tests.servers import wait_until

pytestmark = pytest.mark.vllm

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def test_models_lists_the_demo_model(client: OpenAI) -> None:
    assert next(m.id for m in client.models.list()) == MODEL_ID


def test_capital_of_france(client: OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL_ID, messages=FRANCE, temperature=0)
    choice = r.choices[0]
    assert "Paris" in (choice.message.content or "")
    assert choice.finish_reason == "stop"
    assert r.usage is not None
    assert r.usage.prompt_tokens > 5
    assert r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stream_matches_non_stream_at_temperature_zero(client: OpenAI) -> None:
    full = client.chat.completions.create(model=MODEL_ID, messages=FRANCE, temperature=0)
    stream = client.chat.completions.create(
        model=MODEL_ID,
        messages=FRANCE,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishing = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishing[-1] == "stop"
    assert all(f is None for f in finishing[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert full.usage is not None
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_completions_with_max_tokens(client: OpenAI) -> None:
    r = client.completions.create(model=MODEL_ID, prompt="The sky is", max_tokens=5, temperature=0)
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None
    assert r.usage.completion_tokens == 5
    stream = client.completions.create(
        model=MODEL_ID, prompt="The sky is", max_tokens=5, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in stream if c.choices) == r.choices[0].text


def test_max_tokens_respected_in_chat(client: OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL_ID, messages=FRANCE, max_completion_tokens=3, temperature=0
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None
    assert r.usage.completion_tokens == 3


def test_n_two_and_streamed_indexes(client: OpenAI) -> None:
    """Usage for n=2 counts the tokens of both choices (each token is one logprobs
    entry), whole or streamed. Both generate (`no-cache`): a seeded request is
    cacheable, and a replay would show the whole answer's usage again."""
    story = [{"role": "user", "content": "Tell me a short story."}]
    sampling: dict[str, Any] = {"n": 2, "max_tokens": 12, "temperature": 1.0, "seed": 5}
    sampling["extra_headers"] = {"Cache-Control": "no-cache"}
    r = client.chat.completions.create(model=MODEL_ID, messages=story, logprobs=True, **sampling)
    assert [c.index for c in r.choices] == [0, 1]
    tokens = [len(c.logprobs.content or []) if c.logprobs else 0 for c in r.choices]
    assert all(0 < t <= 12 for t in tokens), tokens
    assert r.usage is not None
    assert r.usage.completion_tokens == sum(tokens), (r.usage, tokens)
    assert r.usage.total_tokens == r.usage.prompt_tokens + sum(tokens)
    stream = client.chat.completions.create(
        model=MODEL_ID,
        messages=story,
        logprobs=True,
        stream=True,
        stream_options={"include_usage": True},
        **sampling,
    )
    texts = {0: "", 1: ""}
    streamed = {0: 0, 1: 0}
    finished = set()
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            streamed[choice.index] += len(choice.logprobs.content or []) if choice.logprobs else 0
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1}
    assert texts == {c.index: c.message.content for c in r.choices}
    assert list(streamed.values()) == tokens
    assert usage is not None
    assert usage.completion_tokens == sum(tokens), (usage, tokens)
    assert usage.prompt_tokens == r.usage.prompt_tokens


def test_same_seed_same_text(client: OpenAI) -> None:
    def sample(seed: int) -> str:
        r = client.completions.create(
            model=MODEL_ID, prompt="Once upon a time", max_tokens=16, temperature=1.0, seed=seed
        )
        return r.choices[0].text

    assert sample(1234) == sample(1234)
    assert len({sample(seed) for seed in range(4)}) > 1


def test_stop_sequence(client: OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL_ID, messages=FRANCE, temperature=0, stop=["Paris"]
    )
    content = r.choices[0].message.content or ""
    assert "Paris" not in content
    assert content.strip()
    assert r.choices[0].finish_reason == "stop"


def test_chat_logprobs_shape(client: OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL_ID, messages=FRANCE, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3
    )
    choice = r.choices[0]
    assert choice.logprobs is not None
    content = choice.logprobs.content or []
    assert content
    assert "".join(t.token for t in content) == choice.message.content
    for token in content:
        assert token.logprob <= 0
        assert len(token.top_logprobs) == 3
        assert token.top_logprobs[0].logprob >= token.top_logprobs[-1].logprob
        # temperature 0 samples the most likely token
        assert token.top_logprobs[0].token == token.token


def test_completion_logprobs_shape(client: OpenAI) -> None:
    r = client.completions.create(
        model=MODEL_ID, prompt="The capital of France is", max_tokens=4, temperature=0, logprobs=2
    )
    lp = r.choices[0].logprobs
    assert lp is not None
    assert lp.tokens is not None
    assert lp.token_logprobs is not None
    assert lp.top_logprobs is not None
    assert lp.text_offset is not None
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert "".join(lp.tokens) == r.choices[0].text
    assert all(len(top) == 2 for top in lp.top_logprobs)


def test_bad_input_gets_openai_errors(client: OpenAI, gateway: Gateway) -> None:
    with pytest.raises(NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=FRANCE)
    assert missing.value.code == "model_not_found"
    with pytest.raises(BadRequestError) as negative:
        client.chat.completions.create(model=MODEL_ID, messages=FRANCE, max_tokens=-1)
    assert negative.value.param == "max_tokens"
    with pytest.raises(BadRequestError) as too_long:
        client.completions.create(model=MODEL_ID, prompt="word " * 3000, max_tokens=4)
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(BadRequestError) as too_many:
        client.chat.completions.create(
            model=MODEL_ID, messages=FRANCE, logprobs=True, top_logprobs=21
        )
    assert too_many.value.param == "top_logprobs"
    r = httpx.post(gateway.url + "/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(gateway.url + "/v1/chat/completions", content=b"x" * (5 * 1024 * 1024))
    assert r.status_code == 413
    # Nothing above disturbed the engine.
    ok = client.chat.completions.create(model=MODEL_ID, messages=FRANCE, temperature=0)
    assert "Paris" in (ok.choices[0].message.content or "")


def _leave_mid_answer(gateway: Gateway, body: dict[str, Any], calls: EngineCalls) -> None:
    """Send `body`, wait until vLLM is generating it, then close the connection."""
    if body["stream"]:
        with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()  # kept referenced: dropping it would close early
            received = 0
            while received < 5:
                received += '"content"' in next(lines)
            assert gateway.engine.stats().unfinished == 1, gateway.engine.stats()
            assert calls.started
            assert not calls.aborted  # inside vLLM, the answer still owed
        return
    host, port = gateway.url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head.encode() + payload)
        assert wait_until(lambda: gateway.engine.stats().unfinished == 1, timeout=30)
        assert calls.started
        assert not calls.aborted  # inside vLLM, the answer still owed


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("cached", [True, False], ids=["single-flight", "uncached"])
def test_a_client_that_leaves_aborts_its_request_inside_vllm(
    gateway: Gateway, client: OpenAI, stream: bool, cached: bool
) -> None:
    """Cacheable requests (greedy) run in the cache's single flight, which is cancelled
    when its last follower leaves; others (sampled without a seed) run under the
    request itself. Either way, streamed or not, vLLM aborts the request: its
    `abort` is called and it holds nothing more. `ignore_eos` and 1800 tokens keep the
    answer going far longer than the test waits, so only an abort ends it."""
    engine = gateway.engine
    prompt = f"Write a very long story about a dragon ({'cached' if cached else 'uncached'})."
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 1800,
        "ignore_eos": True,
        "temperature": 0 if cached else 1.0,
        "stream": stream,
    }
    before = gateway.lookups()
    with engine_calls(engine) as calls:
        _leave_mid_answer(gateway, body, calls)
        assert wait_until(lambda: bool(calls.aborted), timeout=30), (calls, engine.stats())
        assert wait_until(lambda: engine.stats().unfinished == 0, timeout=10), engine.stats()
    assert len(calls.started) == 1
    assert len(calls.aborted) == 1, calls
    assert calls.aborted[0].startswith(calls.started[0]), calls  # that very request
    # The request went the way it was meant to: a cache miss (its own flight), or past
    # the cache.
    result = "miss" if cached else "bypass"
    assert wait_until(lambda: gateway.lookups()[result] == before[result] + 1, timeout=10)
    # One more request runs through the scheduler; its last step reports what is left.
    client.chat.completions.create(model=MODEL_ID, messages=FRANCE, max_tokens=4)
    stats = engine.stats()
    assert (stats.running, stats.waiting, stats.unfinished) == (0, 0, 0), stats
