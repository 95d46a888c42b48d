"""What the model directory says, honoured as `vllm serve` honours it: sampling defaults
from `generation_config.json` (an unset temperature is the model's, not 1.0; an unset
max_tokens is its max_new_tokens), and a chat template that refuses a conversation
(`raise_exception`) is the client's 400, not a 500. One more in-process engine, on a
copy of the demo model whose generation_config.json and template say so."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engines.vllm_local import VLLMEngine
from gateway.app import create_app
from gateway.settings import CacheSettings, EngineSettings, Settings
from tests.servers import serve, wait_until
from tests.settings import NO_AUTH

pytestmark = pytest.mark.vllm

MODEL_ID = "smollm2-defaults"
MAX_NEW_TOKENS = 6
REFUSAL = "this template takes at most three messages"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def url(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = tmp_path_factory.mktemp("defaults-model")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (model / name).symlink_to(demo_model / name)
    generation = json.loads((demo_model / "generation_config.json").read_text())
    generation |= {"do_sample": False, "temperature": 0.0, "max_new_tokens": MAX_NEW_TOKENS}
    (model / "generation_config.json").write_text(json.dumps(generation))
    template = (demo_model / "chat_template.jinja").read_text()
    guard = f"{{% if messages | length > 3 %}}{{{{ raise_exception('{REFUSAL}') }}}}{{% endif %}}"
    (model / "chat_template.jinja").write_text(guard + template)
    options = {"model": str(model), "max_model_len": 1024, "enforce_eager": True,
               "cpu_kvcache_space_gib": 1}  # fmt: skip
    engine = EngineSettings(name="defaults", kind="vllm", model_id=MODEL_ID, options=options)
    app = create_app(Settings(engines=[engine], cache=CacheSettings(backend="none"), auth=NO_AUTH))
    (served,) = app.state.shared.catalog.models
    (backend,) = served.pool.backends
    with serve(app) as base:
        wait_until(lambda: backend.state in ("ready", "failed"), timeout=600, interval=0.5)
        assert backend.state == "ready", backend.error
        assert isinstance(backend.engine, VLLMEngine)
        yield base


def _chat(url: str, **body: object) -> httpx.Response:
    body = {"model": MODEL_ID, "messages": FRANCE, **body}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


def test_unset_sampling_fields_take_the_models_defaults(url: str) -> None:
    response = _chat(url)  # no temperature, no max_tokens
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["usage"]["completion_tokens"] == MAX_NEW_TOKENS
    assert answer["choices"][0]["finish_reason"] == "length"
    greedy = _chat(url, temperature=0, max_tokens=MAX_NEW_TOKENS).json()
    assert answer["choices"][0]["message"] == greedy["choices"][0]["message"]
    # vLLM's own word that the unset temperature was the model's 0.0, not 1.0:
    refused = _chat(url, n=2)
    assert refused.status_code == 400
    assert "greedy" in refused.json()["error"]["message"]


def test_the_clients_fields_still_win(url: str) -> None:
    answer = _chat(url, max_tokens=2, temperature=0).json()
    assert answer["usage"]["completion_tokens"] == 2


def test_a_template_refusal_is_the_clients_400(url: str) -> None:
    turns = [*FRANCE, {"role": "assistant", "content": "Paris."}] * 2
    response = _chat(url, messages=turns)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert REFUSAL in error["message"]
    assert error["type"] == "invalid_request_error"
