"""gateway/pooled.py on plain pools of scripted engines: what a pool serves, retries on
another backend, and engines without the capability."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from engines.errors import EngineUnavailable, InvalidGenerationRequest, UnsupportedEndpoint
from engines.scripted import ScriptedEngine
from engines.types import Adapter
from gateway import pooled
from gateway.balancer.backend import Backend
from gateway.balancer.pool import Pool
from gateway.call import Outcome
from gateway.catalog import Route
from gateway.settings import BalancerSettings
from tests.gateway.conftest import scripted


class Down(ScriptedEngine):
    """An embedding engine whose upstream is gone."""

    async def embed(self, body: Mapping[str, Any], adapter: Adapter | None) -> dict[str, Any]:
        raise EngineUnavailable("upstream down")


class Bare:
    """An engine with the core interface only: no embeddings, no tokenizer."""

    name = model_id = "bare"
    adapter_support = None
    serves = frozenset({"embed"})
    weights = None


async def route(*engines: Any) -> Route:
    backends = []
    for engine in engines:
        if isinstance(engine, ScriptedEngine):
            await engine.start()
        backends.append(Backend(engine, state="ready"))
    return Route(Pool("m", backends, BalancerSettings(policy="round_robin")))


async def test_a_pool_serves_what_every_backend_serves() -> None:
    pooled.serving(await route(scripted("m", serves=("embed",))), "embed", "embeddings")
    with pytest.raises(UnsupportedEndpoint) as refused:
        pooled.serving(await route(scripted("m")), "embed", "embeddings")
    assert refused.value.param == "model"
    assert "The model 'm' does not support the Embeddings API" in refused.value.message
    mixed = await route(scripted("m", serves=("embed",)), scripted("m"))
    with pytest.raises(UnsupportedEndpoint):
        pooled.serving(mixed, "embed", "embeddings")
    both = await route(scripted("m", serves=("generate", "embed")))
    pooled.serving(both, "generate", "chat")
    pooled.serving(both, "embed", "embeddings")


async def test_a_failing_backend_is_retried_on_another() -> None:
    down = Down("down", "m", scripted(serves=("embed",)).config)
    up = scripted("m", serves=("embed",))
    where = await route(down, up)
    outcome = Outcome()
    answer = await pooled.call(where, pooled.embed({"input": "a"}), outcome)
    assert len(answer["data"]) == 1
    assert (outcome.backend, outcome.attempts, outcome.model) == ("m", 2, "m")
    assert [b.in_flight for b in where.pool.backends] == [0, 0]
    assert where.pool.backends[0].breaker.failures == 1


async def test_the_clients_mistakes_are_not_retried() -> None:
    first, second = scripted("m", serves=("embed",)), scripted("m", serves=("embed",))
    where = await route(first, second)
    outcome = Outcome()
    with pytest.raises(InvalidGenerationRequest):
        await pooled.call(where, pooled.embed({"input": "a", "dimensions": 99}), outcome)
    assert outcome.attempts == 1
    assert first.generations + second.generations == 0


async def test_an_engine_without_the_capability_is_a_400() -> None:
    where = await route(Bare())
    for operation, api in (
        (pooled.embed({"input": "a"}), "Embeddings API"),
        (pooled.tokenize({"prompt": "a"}), "Tokenize API"),
        (pooled.detokenize({"tokens": [1]}), "Detokenize API"),
    ):
        with pytest.raises(UnsupportedEndpoint) as refused:
            await pooled.call(where, operation, Outcome())
        assert api in refused.value.message


async def test_a_lone_backend_that_keeps_failing_gets_max_attempts_then_its_error() -> None:
    down = Down("down", "m", scripted(serves=("embed",)).config)
    where = await route(down)
    outcome = Outcome()
    with pytest.raises(EngineUnavailable, match="upstream down"):
        await pooled.call(where, pooled.embed({"input": "a"}), outcome)
    assert outcome.attempts == where.pool.settings.max_attempts
    assert where.pool.backends[0].in_flight == 0
