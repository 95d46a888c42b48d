from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from engines.scripted import ScriptedConfig, ScriptedEngine
from gateway.app import create_app
from gateway.settings import Settings
from tests.servers import serve, wait_until
from tests.settings import NO_AUTH


def scripted(model_id: str = "scripted", **options: Any) -> ScriptedEngine:
    return ScriptedEngine(name=model_id, model_id=model_id, config=ScriptedConfig(**options))


def settings(**overrides: Any) -> Settings:
    return Settings(**{"auth": NO_AUTH, **overrides})


@pytest.fixture
def engine() -> ScriptedEngine:
    return scripted()


@pytest.fixture
def base_url(engine: ScriptedEngine) -> Iterator[str]:
    """A live gateway on loopback in front of `engine`, started and ready."""
    app = create_app(settings(max_body_bytes=64 * 1024, max_schema_bytes=8192), engines=[engine])
    with serve(app) as url:
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=10)
        yield url
