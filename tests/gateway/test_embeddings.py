"""`POST /v1/embeddings`, `/tokenize` and `/detokenize` through a live gateway in front
of the scripted engine (the test double): routing by what a model serves, the bodies
vLLM's server takes, the gateway's bounds, errors, auth, limits, metrics and the
access log. The real engines are tested in tests/e2e/test_embeddings.py."""

from __future__ import annotations

import array
import base64
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.auth.keys import digest
from gateway.settings import AuthSettings, EngineSettings, KeySettings
from tests.gateway.conftest import scripted, settings
from tests.gateway.test_errors import assert_error
from tests.servers import serve, wait_until

EMBED, CHAT = "scripted-embed", "scripted"
MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """A gateway serving a scripted embedding model and a scripted chat model."""
    engines = [scripted(EMBED, serves=("embed",), embedding_size=8), scripted(CHAT)]
    app = create_app(settings(max_embedding_inputs=4, max_messages=3), engines=engines)
    with serve(app) as base:
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=10)
        yield base


def embed(url: str, **body: Any) -> httpx.Response:
    return httpx.post(url + "/v1/embeddings", json={"model": EMBED, **body})


def vectors(response: httpx.Response) -> list[list[float]]:
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [d["index"] for d in data] == list(range(len(data)))
    return [d["embedding"] for d in data]


def test_vectors_are_deterministic_and_per_input(url: str) -> None:
    r = embed(url, input=["a cat", "a dog", "a cat"])
    assert r.json()["model"] == EMBED
    assert r.json()["object"] == "list"
    assert r.headers["x-switchyard-backend"] == EMBED
    one, two, three = vectors(r)
    assert len(one) == 8
    assert one == three
    assert one != two
    assert vectors(embed(url, input="a cat")) == [one]
    assert r.json()["usage"]["prompt_tokens"] == len("a cat" * 2 + "a dog")


def test_base64_decodes_to_the_same_floats(url: str) -> None:
    (floats,) = vectors(embed(url, input="hello"))
    (encoded,) = vectors(embed(url, input="hello", encoding_format="base64"))
    assert isinstance(encoded, str)
    decoded = array.array("f", base64.b64decode(encoded)).tolist()
    assert decoded == pytest.approx(floats, abs=1e-7)


@pytest.mark.parametrize(
    "body",
    [
        {"input": [1, 2, 3]},
        {"input": [[1, 2], [3]]},
        {"input": MSG},
        {"input": [MSG, MSG]},
        {"messages": MSG},
        {"messages": [MSG, MSG]},
    ],
    ids=["token-ids", "token-id-lists", "conversation", "conversations", "messages", "batch"],
)
def test_every_input_form_vllm_takes(url: str, body: dict[str, Any]) -> None:
    value = body.get("input", body.get("messages"))
    expected = len(value) if isinstance(value[0], list) else 1
    assert len(vectors(embed(url, **body))) == expected


def test_dimensions_where_the_engine_supports_them(url: str) -> None:
    (full,) = vectors(embed(url, input="x"))
    (short,) = vectors(embed(url, input="x", dimensions=3))
    assert short == full[:3]
    assert_error(embed(url, input="x", dimensions=9), 400, "dimensions")


def test_the_sdk_gets_vectors(url: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    answer = client.embeddings.create(model=EMBED, input=["one", "two"])  # base64 on the wire
    assert [len(d.embedding) for d in answer.data] == [8, 8]
    assert answer.data[0].embedding == pytest.approx(vectors(embed(url, input="one"))[0])


def test_embeddings_from_a_chat_model_and_the_reverse_are_400s(url: str) -> None:
    error = assert_error(embed(url, model=CHAT, input="hi"), 400, "model")
    assert f"'{CHAT}'" in error["message"]
    metrics = httpx.get(url + "/metrics").text  # counted under the model asked for
    assert f'endpoint="embeddings",model="{CHAT}",status="400"' in metrics
    assert "Embeddings API" in error["message"]
    assert error["code"] == "unsupported_endpoint"
    chat = httpx.post(url + "/v1/chat/completions", json={"model": EMBED, "messages": MSG})
    error = assert_error(chat, 400, "model")
    assert f"'{EMBED}'" in error["message"]
    assert "Chat Completions API" in error["message"]
    assert "embedding model" in error["message"]
    completion = httpx.post(url + "/v1/completions", json={"model": EMBED, "prompt": "hi"})
    assert "Completions API" in assert_error(completion, 400, "model")["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": []}, "input"),
        ({"input": ""}, "input"),
        ({"input": ["a", ""]}, "input"),
        ({"input": ["a"] * 5}, "input"),  # max_embedding_inputs: 4
        ({"messages": [MSG] * 5}, "messages"),
        ({"input": [MSG * 4]}, "input"),  # max_messages: 3
        ({"input": ["a", 1]}, "input[1]"),
        ({"input": [-1]}, "input[0]"),
        ({"input": "a", "messages": MSG}, None),
        ({}, None),
        ({"input": "a", "encoding_format": "hex"}, "encoding_format"),
        ({"input": "a", "encoding_format": "bytes"}, "encoding_format"),
        ({"input": "a", "request_id": "mine"}, "request_id"),
        ({"input": "a", "dimensions": 0}, "dimensions"),
        ({"input": "a", "dimensions": "8"}, "dimensions"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    url: str, body: dict[str, Any], param: str | None
) -> None:
    assert_error(embed(url, **body), 400, param)


def test_the_bound_on_inputs_is_named(url: str) -> None:
    message = assert_error(embed(url, input=["a"] * 5), 400, "input")["message"]
    assert "max_embedding_inputs" in message
    assert "4" in message


def test_unknown_model_is_a_404(url: str) -> None:
    error = assert_error(embed(url, model="nope", input="a"), 404, "model")
    assert error["code"] == "model_not_found"
    r = httpx.post(url + "/tokenize", json={"model": "nope", "prompt": "a"})
    assert_error(r, 404, "model")


def test_tokenize_and_detokenize(url: str) -> None:
    r = httpx.post(url + "/tokenize", json={"model": CHAT, "prompt": "hé"})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "count": 3,
        "max_model_len": 4096,
        "tokens": list("hé".encode()),
        "token_strs": None,
    }
    chat = httpx.post(url + "/tokenize", json={"model": EMBED, "messages": MSG})
    assert chat.json()["tokens"] == list(b"user: hi\n")
    back = httpx.post(url + "/detokenize", json={"model": CHAT, "tokens": r.json()["tokens"]})
    assert back.status_code == 200, back.text
    assert back.json() == {"prompt": "hé"}


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/tokenize", {"model": CHAT}, None),
        ("/tokenize", {"model": CHAT, "prompt": "a", "messages": MSG}, None),
        ("/tokenize", {"model": CHAT, "messages": MSG * 4}, "messages"),
        ("/tokenize", {"prompt": "a"}, "model"),  # two models served: name one
        ("/detokenize", {"model": CHAT, "tokens": [-1]}, "tokens[0]"),
        ("/detokenize", {"model": CHAT, "tokens": "abc"}, "tokens"),
        ("/detokenize", {"model": CHAT, "tokens": [300]}, "tokens"),  # the engine's verdict
    ],
)
def test_bad_tokenizer_bodies(url: str, path: str, body: dict[str, Any], param: str | None) -> None:
    assert_error(httpx.post(url + path, json=body), 400, param)


def test_a_lone_model_need_not_be_named() -> None:
    """As `vllm serve` takes bodies without `model`, so does a gateway serving one."""
    app = create_app(settings(), engines=[scripted(EMBED, serves=("embed",))])
    with serve(app) as base:
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=10)
        r = httpx.post(base + "/v1/embeddings", json={"input": "a"})
        assert r.status_code == 200, r.text
        assert r.json()["model"] == EMBED
        assert httpx.post(base + "/tokenize", json={"prompt": "a"}).json()["tokens"] == [97]


def test_keys_limits_metrics_and_access_log(caplog: pytest.LogCaptureFixture) -> None:
    key = KeySettings(label="embedder", key_sha256=digest("k-embed"), models=[EMBED], rpm=2)
    auth = AuthSettings(enabled=True, keys=[key])
    engines = [scripted(EMBED, serves=("embed",)), scripted(CHAT)]
    app = create_app(settings(auth=auth), engines=engines)
    with serve(app) as base, caplog.at_level(logging.INFO, "switchyard.access"):
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=10)
        body = {"model": EMBED, "input": "abc"}
        assert_error(httpx.post(base + "/v1/embeddings", json=body), 401)
        client = httpx.Client(base_url=base, headers={"Authorization": "Bearer k-embed"})
        # A model the key may not use answers like one that does not exist.
        assert_error(client.post("/v1/embeddings", json={**body, "model": CHAT}), 404, "model")
        ok = client.post("/v1/embeddings", json=body)
        assert ok.status_code == 200, ok.text
        assert ok.headers["x-ratelimit-limit-requests"] == "2"
        tokenized = client.post("/tokenize", json={"model": EMBED, "prompt": "a"})
        assert tokenized.status_code == 200, tokenized.text
        assert_error(client.post("/v1/embeddings", json=body), 429)
        metrics = client.get("/metrics").text  # any key; an admin's adds key labels
    assert (
        'switchyard_requests_total{adapter="",backend="scripted-embed",cache="bypass",'
        'endpoint="embeddings",model="scripted-embed",status="200",stream="false"} 1.0'
    ) in metrics
    assert 'switchyard_prompt_tokens_total{adapter="",model="scripted-embed"} 3.0' in metrics
    assert 'endpoint="embeddings",le="+Inf",model="scripted-embed"} 1.0' in metrics
    assert 'endpoint="tokenize"' in metrics
    lines = [r.getMessage() for r in caplog.records if r.name == "switchyard.access"]
    assert any('"endpoint":"embeddings"' in line and '"prompt_tokens":3' in line for line in lines)


def test_through_a_remote_engine_the_answer_names_the_clients_model() -> None:
    """openai_remote in front of another gateway whose model has another name: the
    body goes out under the upstream's name, the answer comes back under ours."""
    upstream = create_app(settings(), engines=[scripted("up-embed", serves=("embed",))])
    with serve(upstream) as up:
        assert wait_until(lambda: upstream.state.shared.catalog.ready, timeout=10)
        options = {"url": up, "upstream_model": "up-embed", "serves": ["embed"]}
        engine = EngineSettings(name="r", kind="openai_remote", model_id="ours", options=options)
        front = create_app(settings(engines=[engine]))
        with serve(front) as url:
            assert wait_until(lambda: front.state.shared.catalog.ready, timeout=10)
            r = httpx.post(url + "/v1/embeddings", json={"model": "ours", "input": "a"})
            assert r.status_code == 200, r.text
            assert r.json()["model"] == "ours"
            assert vectors(r) == vectors(embed(up, model="up-embed", input="a"))
            tokens = httpx.post(url + "/tokenize", json={"model": "ours", "prompt": "ab"})
            assert tokens.json()["tokens"] == [97, 98]
            chat = httpx.post(url + "/v1/chat/completions", json={"model": "ours", "messages": MSG})
            assert "Chat Completions API" in assert_error(chat, 400, "model")["message"]
