"""The official OpenAI SDK against a live gateway running the real in-process vLLM
engine on SmolLM2-135M-Instruct."""

from __future__ import annotations

import httpx
import pytest
from openai import BadRequestError, NotFoundError, OpenAI

from tests.e2e.conftest import MODEL_ID, Gateway
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
    story = [{"role": "user", "content": "Tell me a short story."}]
    r = client.chat.completions.create(
        model=MODEL_ID, messages=story, n=2, max_tokens=12, temperature=1.0, seed=5
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert r.usage is not None
    assert (
        r.usage.completion_tokens
        == sum(12 if c.finish_reason == "length" else 1 for c in r.choices)
        or r.usage.completion_tokens <= 24
    )
    stream = client.chat.completions.create(
        model=MODEL_ID, messages=story, n=2, max_tokens=12, temperature=1.0, seed=5, stream=True
    )
    texts = {0: "", 1: ""}
    finished = set()
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1}
    assert texts == {c.index: c.message.content for c in r.choices}


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


def test_disconnect_mid_stream_aborts_inside_vllm(gateway: Gateway, client: OpenAI) -> None:
    engine = gateway.engine
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
        "max_tokens": 1800,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body) as r:
        # Keep the iterator referenced: dropping it early would close the connection.
        lines = r.iter_lines()
        received = 0
        while received < 5:
            received += '"content"' in next(lines)
        # Mid-generation: vLLM holds the request.
        assert engine.stats().unfinished == 1, engine.stats()
    assert wait_until(lambda: engine.stats().unfinished == 0, timeout=10), engine.stats()
    # One more request runs through the scheduler; its last step reports what is left.
    client.chat.completions.create(model=MODEL_ID, messages=FRANCE, max_tokens=4)
    stats = engine.stats()
    assert (stats.running, stats.waiting, stats.unfinished) == (0, 0, 0), stats
