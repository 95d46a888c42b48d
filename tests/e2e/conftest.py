"""One real vLLM engine (the CPU build on the demo model) for the whole session,
behind a live gateway on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from openai import OpenAI

from engines.vllm_local import VLLMEngine
from gateway.app import create_app
from gateway.settings import EngineSettings, Settings
from tests.servers import serve, wait_until

MODEL_ID = "smollm2-135m-instruct"


@dataclass
class Gateway:
    url: str
    engine: VLLMEngine

    def client(self) -> OpenAI:
        return OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="session")
def gateway(demo_model: Path) -> Iterator[Gateway]:
    options = {
        "model": str(demo_model),
        "max_model_len": 2048,
        "enforce_eager": True,
        "cpu_kvcache_space_gib": 1,
    }
    settings = Settings(
        engines=[EngineSettings(name="local", kind="vllm", model_id=MODEL_ID, options=options)]
    )
    app = create_app(settings)
    (served,) = app.state.engines.served
    with serve(app) as url:
        wait_until(lambda: served.state != "loading", timeout=600, interval=0.5)
        assert served.state == "ready", served.error
        assert isinstance(served.engine, VLLMEngine)
        yield Gateway(url, served.engine)


@pytest.fixture(scope="session")
def client(gateway: Gateway) -> OpenAI:
    return gateway.client()
