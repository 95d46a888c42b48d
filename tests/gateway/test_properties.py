"""Property tests (hypothesis): request normalization and cache keys."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engines.types import GenerationRequest, Message
from gateway.cache.keys import Identity, cache_key
from gateway.errors import InvalidRequest
from gateway.openai import convert
from gateway.openai.schemas import ChatCompletionRequest

text = st.text(max_size=40)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": text}
    ),
    min_size=1,
    max_size=4,
)
bodies = st.fixed_dictionaries(
    {"model": st.just("m"), "messages": messages},
    optional={
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0.01, 1),
        "n": st.integers(1, 4),
        "stop": st.none() | text | st.lists(text, max_size=4),
        "seed": st.integers(0, 2**31),
        "max_tokens": st.integers(1, 4096),
        "max_completion_tokens": st.integers(1, 4096),
        "presence_penalty": st.floats(-2, 2),
        "frequency_penalty": st.floats(-2, 2),
    },
)


@given(bodies)
@settings(max_examples=300, deadline=None)
def test_chat_normalization(body: dict[str, Any]) -> None:
    parsed = ChatCompletionRequest.model_validate(body)
    limits = {body.get("max_tokens"), body.get("max_completion_tokens")} - {None}
    if len(limits) > 1:  # the one disagreement the converter refuses
        with pytest.raises(InvalidRequest, match="disagree"):
            convert.chat_request(parsed, "rid", convert.Bounds())
        return
    request = convert.chat_request(parsed, "rid", convert.Bounds())
    assert request.prompt == tuple(Message(m["role"], m["content"]) for m in body["messages"])
    assert request.temperature == body.get("temperature")  # None: the model's default
    assert request.top_p == body.get("top_p")
    assert request.options == {}
    assert request.n == body.get("n", 1)
    stop = body.get("stop")
    assert request.stop == (
        () if stop is None else (stop,) if isinstance(stop, str) else tuple(stop)
    )
    assert request.max_tokens == body.get("max_completion_tokens", body.get("max_tokens"))
    assert request.seed == body.get("seed")
    assert request.logprobs is None


requests = st.builds(
    GenerationRequest,
    request_id=text,
    prompt=text
    | st.lists(
        st.builds(Message, st.sampled_from(["user", "system"]), text), min_size=1, max_size=3
    ).map(tuple),
    max_tokens=st.none() | st.integers(1, 512),
    temperature=st.sampled_from([0.0, 0.5, 1.0]),
    top_p=st.sampled_from([0.5, 1.0]),
    n=st.integers(1, 3),
    stop=st.lists(text, max_size=2).map(tuple),
    seed=st.none() | st.integers(0, 100),
    logprobs=st.none() | st.integers(0, 5),
)
identities = st.builds(
    Identity,
    base=st.sampled_from(["a", "b"]),
    artifact=st.none() | st.just("art-1"),
    adapter=st.none() | st.just("shout"),
    adapter_digest=st.none() | st.sampled_from(["1" * 64, "2" * 64]),
)


@given(identities, requests, text)
@settings(max_examples=300, deadline=None)
def test_cache_keys_ignore_request_ids_and_greedy_sampling_knobs(
    identity: Identity, request: GenerationRequest, rid: str
) -> None:
    key = cache_key(identity, "chat", [request])
    assert re.fullmatch(r"sy3:[0-9a-f]{64}", key)
    assert cache_key(identity, "chat", [dataclasses.replace(request, request_id=rid)]) == key
    if request.temperature == 0:
        other = dataclasses.replace(request, seed=7, top_p=0.3)
        assert cache_key(identity, "chat", [other]) == key


@given(identities, identities, requests, requests)
@settings(max_examples=300, deadline=None)
def test_cache_keys_differ_when_the_answer_may(
    a: Identity, b: Identity, x: GenerationRequest, y: GenerationRequest
) -> None:
    def meaning(i: Identity, r: GenerationRequest) -> Any:
        fields = dataclasses.asdict(r)
        del fields["request_id"]
        if r.temperature == 0:
            fields["seed"], fields["top_p"] = None, 1.0
        return (i, repr(fields))

    same = meaning(a, x) == meaning(b, y)
    assert (cache_key(a, "chat", [x]) == cache_key(b, "chat", [y])) == same
