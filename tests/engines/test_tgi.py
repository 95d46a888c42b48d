"""The TGI engine against the TGI double (tests/doubles/tgi.py): no TGI can run on
this CPU-only machine, so this checks our side of TGI's documented API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from engines.errors import (
    EngineOverloaded,
    GenerationFailed,
    InvalidGenerationRequest,
    UnsupportedParameter,
)
from engines.openai_remote import OpenAIRemoteConfig
from engines.tgi import TGIEngine
from engines.types import Adapter, Chunk, GenerationRequest, Message
from gateway.app import create_app
from gateway.settings import Settings
from tests.doubles.tgi import create_tgi_double
from tests.gateway.test_errors import assert_error
from tests.servers import serve, wait_until
from tests.settings import NO_AUTH


@pytest.fixture(scope="module")
def script() -> dict[str, Any]:
    return {}


@pytest.fixture(scope="module")
def double(script: dict[str, Any]) -> Iterator[tuple[str, Starlette]]:
    app = create_tgi_double(script)
    with serve(app) as url:
        yield url, app


@pytest.fixture
async def tgi(double: tuple[str, Starlette], script: dict[str, Any]):  # type: ignore[no-untyped-def]
    script.clear()
    engine = TGIEngine("tgi", "tgi-model", OpenAIRemoteConfig(url=double[0], enable_lora=True))
    await engine.start()
    yield engine
    await engine.aclose()


async def collect(engine: TGIEngine, request: GenerationRequest) -> list[Chunk]:
    return [chunk async for chunk in engine.generate(request)]


async def test_completion_streams_tokens_with_usage_from_details(
    tgi: TGIEngine, double: tuple[str, Starlette]
) -> None:
    assert (await tgi.health()).ok
    chunks = await collect(tgi, GenerationRequest("r", "one two three", temperature=0, seed=3))
    assert "".join(c.text for c in chunks) == "one two three"
    assert "</s>" not in "".join(c.text for c in chunks)  # special tokens are not text
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert sum(c.token_count for c in chunks) == 4  # three words and the EOS token
    assert max(c.prompt_tokens for c in chunks) == 3
    sent = double[1].state.seen[-1]["parameters"]
    assert sent["do_sample"] is False
    assert "temperature" not in sent  # TGI rejects temperature 0
    assert sent["seed"] == 3


async def test_length_finish_and_top_tokens(tgi: TGIEngine) -> None:
    chunks = await collect(tgi, GenerationRequest("r", "a b c d", max_tokens=2, logprobs=1))
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["length"]
    assert all(c.logprobs and c.logprobs[0].top for c in chunks if c.text)


async def test_adapter_is_sent_as_adapter_id_and_chat_model(
    tgi: TGIEngine, double: tuple[str, Starlette]
) -> None:
    adapter = Adapter("shout", "/adapters/shout", "0" * 64, 1)
    await tgi.load_adapter(adapter)
    completion = await collect(tgi, GenerationRequest("r", "hello there", adapter=adapter))
    assert "".join(c.text for c in completion).startswith("[shout]")
    assert double[1].state.seen[-1]["parameters"]["adapter_id"] == "shout"
    chat = (Message("user", "hi you"),)
    chunks = await collect(tgi, GenerationRequest("r", chat, adapter=adapter))
    assert "".join(c.text for c in chunks) == "[shout] hi you"
    assert double[1].state.seen[-1]["model"] == "shout"


async def test_chat_uses_the_messages_api(tgi: TGIEngine) -> None:
    chunks = await collect(tgi, GenerationRequest("r", (Message("user", "x y z"),)))
    assert "".join(c.text for c in chunks) == "x y z"
    assert sum(c.token_count for c in chunks) == 4
    assert max(c.prompt_tokens for c in chunks) == 3


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (GenerationRequest("r", "hi", n=2), "n"),
        (GenerationRequest("r", (Message("user", "hi"),), n=3), "n"),
        (GenerationRequest("r", "hi", presence_penalty=0.5), "presence_penalty"),
    ],
)
async def test_what_tgi_cannot_do_is_refused(
    tgi: TGIEngine, request_: GenerationRequest, param: str
) -> None:
    with pytest.raises(UnsupportedParameter) as info:
        await collect(tgi, request_)
    assert info.value.param == param


async def test_tgi_errors_map_onto_the_engine_errors(
    tgi: TGIEngine, script: dict[str, Any]
) -> None:
    with pytest.raises(InvalidGenerationRequest, match="must be <= 64"):
        await collect(tgi, GenerationRequest("r", "w " * 60, max_tokens=20))
    script["overloaded"] = True
    with pytest.raises(EngineOverloaded):
        await collect(tgi, GenerationRequest("r", "hi"))
    script.clear()
    script["fail_after"] = 1
    with pytest.raises(GenerationFailed, match="generation"):
        await collect(tgi, GenerationRequest("r", "a b c"))


def test_through_the_gateway_tgi_streams_and_refuses_n(
    double: tuple[str, Starlette], script: dict[str, Any]
) -> None:
    """The OpenAI API in front of the TGI double: a streamed completion, and n=2 as
    a 400 naming `n` (never a silent single choice)."""
    script.clear()
    settings = Settings(
        engines=[
            {"name": "tgi", "kind": "tgi", "model_id": "tgi-model", "options": {"url": double[0]}}
        ],
        auth=NO_AUTH,
    )
    app = create_app(settings)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert wait_until(lambda: app.state.engines.ready, timeout=10)
        body = {"model": "tgi-model", "prompt": "one two three", "stream": True, "temperature": 0}
        with client.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(line[6:]) for line in lines[:-1]]
        assert "".join(c["text"] for chunk in chunks for c in chunk["choices"]) == "one two three"
        chat = {"model": "tgi-model", "messages": [{"role": "user", "content": "hi"}], "n": 2}
        error = assert_error(client.post("/v1/chat/completions", json=chat), 400, param="n")
        assert error["code"] == "unsupported_parameter"
