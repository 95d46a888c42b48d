"""`POST /v1/embeddings`, `/tokenize` and `/detokenize` on the real vLLM engine.

The demo model (SmolLM2-135M, hidden size 576) is served for embeddings by vLLM's
pooling runner, in-process (`embed_gateway`) and behind `vllm serve --runner pooling`
(`vllm_embed_server`, and `remote_embed_gateway` in front of it). Each parity row is
sent to all three: the vectors agree within a small tolerance (the same weights in
another process may batch differently), usage and error statuses exactly. Tokenize and
detokenize rows go to the generating engine in-process (`gateway`), behind the remote
gateway and to `vllm serve` directly, and token ids must be equal.
"""

from __future__ import annotations

import array
import base64
import math
import struct
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from openai import BadRequestError, NotFoundError, OpenAI

from tests.e2e.conftest import EMBED_ID, MODEL_ID, Gateway, VLLMServer

pytestmark = pytest.mark.vllm

HIDDEN_SIZE = 576  # SmolLM2-135M's hidden size: the length of its pooled vectors
TEXTS = ["The sky is blue.", "Paris is the capital of France.", "Water boils at 100 degrees."]
CONVERSATION = [
    {"role": "system", "content": "You are helpful."},
    {"role": "user", "content": "What is the capital of France?"},
]
TOLERANCE = 1e-3  # per component; the vectors are unit length


def client(url: str) -> OpenAI:
    return OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def floats(encoded: str) -> list[float]:
    return array.array("f", base64.b64decode(encoded)).tolist()


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b, strict=True)) < TOLERANCE


# -- the OpenAI SDK ----------------------------------------------------------------------


def test_the_sdk_gets_vectors_of_the_hidden_size(embed_gateway: str) -> None:
    sdk = client(embed_gateway)
    answer = sdk.embeddings.create(model=EMBED_ID, input=[*TEXTS, TEXTS[0]])
    assert answer.model == EMBED_ID
    vectors = [d.embedding for d in answer.data]
    assert [len(v) for v in vectors] == [HIDDEN_SIZE] * 4
    assert all(abs(math.hypot(*v) - 1) < 1e-3 for v in vectors)  # normalized
    assert vectors[0] == vectors[3]  # identical inputs, identical vectors
    assert not close(vectors[0], vectors[1])
    assert answer.usage.prompt_tokens > 0
    again = sdk.embeddings.create(model=EMBED_ID, input=TEXTS[0])
    assert close(again.data[0].embedding, vectors[0])


def test_base64_decodes_to_the_same_floats(embed_gateway: str) -> None:
    sdk = client(embed_gateway)
    plain = sdk.embeddings.create(model=EMBED_ID, input=TEXTS[1], encoding_format="float")
    encoded = httpx.post(
        embed_gateway + "/v1/embeddings",
        json={"model": EMBED_ID, "input": TEXTS[1], "encoding_format": "base64"},
    )
    assert encoded.status_code == 200, encoded.text
    raw = encoded.json()["data"][0]["embedding"]
    assert isinstance(raw, str)
    assert floats(raw) == pytest.approx(plain.data[0].embedding, abs=1e-6)


# -- parity with vllm serve ----------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    id: str
    body: dict[str, Any]


ROWS = [
    Row("text", {"input": TEXTS[0]}),
    Row("texts", {"input": TEXTS}),
    Row("token-ids", {"input": [504, 6376, 314, 2985]}),
    Row("token-id-lists", {"input": [[504, 6376, 314], [11315, 314]]}),
    Row("messages", {"messages": CONVERSATION}),
    Row("input-conversation", {"input": CONVERSATION}),
    Row("conversations", {"messages": [CONVERSATION, CONVERSATION[1:]]}),
    Row("base64", {"input": TEXTS, "encoding_format": "base64"}),
    Row("truncate", {"input": TEXTS[1], "truncate_prompt_tokens": 3}),
    Row("no-activation", {"input": TEXTS[2], "use_activation": False}),
    Row("special-tokens", {"input": TEXTS[0], "add_special_tokens": False}),
    Row("float16-base64", {"input": TEXTS[0], "encoding_format": "base64",
                           "embed_dtype": "float16"}),
]  # fmt: skip
BAD_ROWS = [
    Row("bad-dimensions", {"input": TEXTS[0], "dimensions": 32}),
    Row("bad-empty-text", {"input": ""}),
    Row("bad-empty-list", {"input": []}),
    Row("bad-truncate", {"input": TEXTS[0], "truncate_prompt_tokens": 5000}),
    Row("bad-context", {"input": "word " * 3000}),
    Row("bad-embed-dtype", {"input": TEXTS[0], "embed_dtype": "float64"}),
]


def _embed(url: str, row: Row) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The summary to compare (status, vectors, usage) and the error, if any."""
    r = httpx.post(url + "/v1/embeddings", json={"model": EMBED_ID, **row.body}, timeout=120)
    if r.status_code != 200:
        error = r.json()["error"]
        assert error["message"], r.text
        return {"status": r.status_code}, error
    body = r.json()
    dtype = row.body.get("embed_dtype", "float32")
    vectors = []
    for item in body["data"]:
        value = item["embedding"]
        if isinstance(value, str):
            code = "=e" if dtype == "float16" else "=f"
            value = [x for (x,) in struct.iter_unpack(code, base64.b64decode(value))]
        vectors.append([float(x) for x in value])
    usage = body["usage"]
    return {"status": 200, "vectors": vectors, "usage": usage["prompt_tokens"]}, None


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.keys() != b.keys() or a["status"] != b["status"] or a.get("usage") != b.get("usage"):
        return False
    pairs = zip(a.get("vectors", []), b.get("vectors", []), strict=True)
    return len(a.get("vectors", [])) == len(b.get("vectors", [])) and all(
        close(x, y) for x, y in pairs
    )


@pytest.mark.parametrize("row", ROWS + BAD_ROWS, ids=[r.id for r in ROWS + BAD_ROWS])
def test_embeddings_parity_with_vllm_serve(
    row: Row, embed_gateway: str, remote_embed_gateway: str, vllm_embed_server: VLLMServer
) -> None:
    in_process, error = _embed(embed_gateway, row)
    remote, remote_error = _embed(remote_embed_gateway, row)
    direct, _ = _embed(vllm_embed_server.url, row)
    assert _same(in_process, remote), (in_process, remote)
    assert _same(in_process, direct), (in_process, direct)
    if row in BAD_ROWS:
        assert in_process["status"] == 400, error
        assert error is not None
        assert remote_error is not None
        assert error["param"] == remote_error["param"]
    else:
        assert all(len(v) == HIDDEN_SIZE for v in in_process["vectors"])


def test_dimensions_is_vllms_verdict(embed_gateway: str) -> None:
    with pytest.raises(BadRequestError) as refused:
        client(embed_gateway).embeddings.create(model=EMBED_ID, input="hi", dimensions=64)
    error = refused.value.body
    assert isinstance(error, dict)
    assert "Matryoshka" in error["message"]
    assert error["param"] == "dimensions"


# -- what a model serves ---------------------------------------------------------------------


def test_embeddings_from_the_chat_model_are_a_400(gateway: Gateway) -> None:
    with pytest.raises(BadRequestError) as refused:
        gateway.client().embeddings.create(model=MODEL_ID, input="hi")
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["param"] == "model"
    assert f"The model '{MODEL_ID}' does not support the Embeddings API" in error["message"]


def test_chat_and_completions_to_the_embedding_model_are_400s(embed_gateway: str) -> None:
    sdk = client(embed_gateway)
    with pytest.raises(BadRequestError) as refused:
        sdk.chat.completions.create(model=EMBED_ID, messages=[{"role": "user", "content": "hi"}])
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["param"] == "model"
    assert f"'{EMBED_ID}' does not support the Chat Completions API" in error["message"]
    with pytest.raises(BadRequestError, match="Completions API"):
        sdk.completions.create(model=EMBED_ID, prompt="hi")


def test_unknown_model_and_too_many_inputs(embed_gateway: str) -> None:
    sdk = client(embed_gateway)
    with pytest.raises(NotFoundError):
        sdk.embeddings.create(model="nope", input="hi")
    with pytest.raises(BadRequestError, match="max_embedding_inputs") as refused:
        sdk.embeddings.create(model=EMBED_ID, input=["a"] * 2049)
    assert isinstance(refused.value.body, dict)
    assert refused.value.body["param"] == "input"
    for bad in ({"encoding_format": "hex"}, {"encoding_format": "bytes"}):
        body = {"model": EMBED_ID, "input": "a", **bad}
        r = httpx.post(embed_gateway + "/v1/embeddings", json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "encoding_format"


def test_metrics_name_the_endpoints(embed_gateway: str) -> None:
    httpx.post(embed_gateway + "/v1/embeddings", json={"model": EMBED_ID, "input": "hi"})
    httpx.post(embed_gateway + "/tokenize", json={"model": EMBED_ID, "prompt": "hi"})
    metrics = httpx.get(embed_gateway + "/metrics").text
    for endpoint in ("embeddings", "tokenize"):
        assert f'endpoint="{endpoint}",model="{EMBED_ID}",status="200"' in metrics


# -- tokenize and detokenize -----------------------------------------------------------------

TOKENIZE_ROWS = [
    {"prompt": "The capital of France is Paris."},
    {"prompt": "Hello", "add_special_tokens": False, "return_token_strs": True},
    {"messages": CONVERSATION},
    {"messages": CONVERSATION, "add_generation_prompt": False},
    {"messages": [*CONVERSATION, {"role": "assistant", "content": "It is"}],
     "add_generation_prompt": False, "continue_final_message": True},
    {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [{
        "type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}]},
]  # fmt: skip


def _post(url: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    r = httpx.post(url + path, json={"model": MODEL_ID, **body}, timeout=60)
    return r.status_code, r.json()


@pytest.mark.parametrize("body", TOKENIZE_ROWS, ids=lambda b: "-".join(sorted(b))[:40])
def test_tokenize_parity_with_vllm_serve(
    body: dict[str, Any], gateway: Gateway, remote_gateway: str, vllm_server: VLLMServer
) -> None:
    in_process = _post(gateway.url, "/tokenize", body)
    remote = _post(remote_gateway, "/tokenize", body)
    direct = _post(vllm_server.url, "/tokenize", body)
    assert in_process[0] == 200, in_process
    assert in_process == remote == direct
    tokens = in_process[1]["tokens"]
    assert in_process[1]["count"] == len(tokens) > 0
    back = [_post(url, "/detokenize", {"tokens": tokens}) for url in
            (gateway.url, remote_gateway, vllm_server.url)]  # fmt: skip
    assert back[0][0] == 200
    assert back[0] == back[1] == back[2]
    if "prompt" in body and body.get("add_special_tokens") is not False:
        assert back[0][1]["prompt"] == body["prompt"]


def test_tokenize_on_the_embedding_model_matches_vllm_serve(
    embed_gateway: str, vllm_embed_server: VLLMServer
) -> None:
    body = {"model": EMBED_ID, "messages": CONVERSATION}
    ours = httpx.post(embed_gateway + "/tokenize", json=body)
    theirs = httpx.post(vllm_embed_server.url + "/tokenize", json=body)
    assert ours.status_code == theirs.status_code == 200, ours.text
    assert ours.json() == theirs.json()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/detokenize", {"tokens": [-1]}),
        (
            "/tokenize",
            {
                "messages": CONVERSATION,
                "add_generation_prompt": True,
                "continue_final_message": True,
            },
        ),
        ("/tokenize", {"messages": CONVERSATION, "chat_template": "{{ messages }}"}),
    ],
    ids=["negative-token", "both-prompt-flags", "request-template"],
)
def test_tokenizer_errors_match_vllm_serve(
    path: str, body: dict[str, Any], gateway: Gateway, remote_gateway: str, vllm_server: VLLMServer
) -> None:
    statuses = {url: _post(url, path, body)[0] for url in
                (gateway.url, remote_gateway, vllm_server.url)}  # fmt: skip
    assert set(statuses.values()) == {400}, statuses
    error = _post(gateway.url, path, body)[1]["error"]
    assert error["message"]
    assert set(error) == {"message", "type", "param", "code"}
