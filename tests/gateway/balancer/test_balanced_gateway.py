"""The balancer through the gateway's HTTP API, over pools of scripted engines:
distribution, failover and retries, ejection and recovery, backpressure."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engines.scripted import ScriptedConfig, ScriptedEngine
from gateway.app import create_app
from gateway.settings import Settings
from tests.gateway.test_adapters import make_adapter
from tests.gateway.test_errors import assert_error
from tests.servers import serve, wait_until
from tests.settings import NO_AUTH

MODEL = "pooled"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def pool(n: int = 2, **options: Any) -> list[ScriptedEngine]:
    return [ScriptedEngine(f"b{i}", MODEL, ScriptedConfig(**options)) for i in range(n)]


@contextlib.contextmanager
def gateway(engines: list[ScriptedEngine], **balancer: Any) -> Iterator[tuple[str, Any]]:
    per_engine = {
        "max_in_flight": balancer.pop("max_in_flight", None),
        "adapter_root": balancer.pop("adapter_root", None),
    }
    settings = Settings(
        engines=[
            {"name": e.name, "kind": "scripted", "model_id": MODEL, **per_engine} for e in engines
        ],
        balancer={"probe_interval_s": 0.1, "probe_timeout_s": 0.5, **balancer},
        auth=NO_AUTH,
    )
    app = create_app(settings, engines=engines)
    with serve(app) as url:
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=10)
        yield url, app


def backends_of(url: str, count: int, **extra: Any) -> Counter[str]:
    seen: Counter[str] = Counter()
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(count):
            r = client.post("/v1/chat/completions", json={**BODY, **extra})
            assert r.status_code == 200, r.text
            seen[r.headers["x-switchyard-backend"]] += 1
    return seen


def burst(url: str, count: int) -> list[httpx.Response]:
    """`count` chat requests at once."""

    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            return await asyncio.gather(
                *(client.post("/v1/chat/completions", json=BODY) for _ in range(count))
            )

    return asyncio.run(send())


def stop(engine: ScriptedEngine) -> None:
    """Make a scripted engine refuse work (EngineUnavailable) and fail its probes."""
    asyncio.run(engine.aclose())


def restart(engine: ScriptedEngine) -> None:
    """Stop a scripted engine and start it again at once, as a replica that restarts
    between two probes (never seen down): it comes back without its adapters."""

    async def again() -> None:
        await engine.aclose()
        await engine.start()

    asyncio.run(again())


def load_adapter(url: str, root: Path, name: str = "a1") -> None:
    make_adapter(root / name, base=MODEL)
    r = httpx.post(url + "/v1/adapters", json={"name": name, "path": name})
    assert r.status_code == 200, r.text


def test_round_robin_spreads_evenly() -> None:
    with gateway(pool(3), policy="round_robin") as (url, _):
        assert backends_of(url, 9) == {"b0": 3, "b1": 3, "b2": 3}


def test_prefix_affinity_keeps_a_conversation_on_one_backend() -> None:
    with gateway(pool(3), policy="prefix_affinity") as (url, _):
        homes = set()
        for i in range(12):
            body = {"messages": [{"role": "user", "content": f"conversation {i}"}]}
            seen = backends_of(url, 3, **body)
            assert len(seen) == 1
            homes |= set(seen)
        assert len(homes) > 1


def test_a_dead_backend_is_retried_around_ejected_and_taken_back() -> None:
    engines = pool(2)
    with gateway(engines, policy="round_robin", unhealthy_after=2) as (url, app):
        backend = app.state.shared.catalog.models[0].pool.backends[0]
        stop(engines[0])
        # Every request succeeds: those routed to b0 fail before any output and are
        # retried on b1, streamed or not.
        assert backends_of(url, 6) == {"b1": 6}
        with httpx.Client(base_url=url) as client:
            with client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as r:
                assert r.status_code == 200
                assert r.headers["x-switchyard-backend"] == "b1"
                assert r.read().endswith(b"data: [DONE]\n\n")
            ready = client.get("/ready")
            assert ready.status_code == 200  # the model is still servable
            (b0,) = [b for b in ready.json()["backends"][MODEL] if b["name"] == "b0"]
            assert b0["circuit"] == "open" or not b0["healthy"]
            assert wait_until(lambda: not backend.healthy, timeout=5)
        asyncio.run(engines[0].start())
        assert wait_until(lambda: backend.routable(time.monotonic()), timeout=5)
        assert backends_of(url, 4) == {"b0": 2, "b1": 2}


def test_no_backend_left_is_503_and_models_list_still_names_the_model(tmp_path: Path) -> None:
    engines = pool(2)
    with gateway(engines, adapter_root=tmp_path) as (url, _app):
        load_adapter(url, tmp_path)
        for engine in engines:
            stop(engine)
        with httpx.Client(base_url=url) as client:
            assert_error(client.post("/v1/chat/completions", json=BODY), 503)
            assert wait_until(lambda: client.get("/ready").status_code == 503, timeout=5)
            ready = client.get("/ready").json()
            assert ready["models"] == {MODEL: "unavailable"}
            models = client.get("/v1/models")
            assert models.status_code == 200
            listed = {m["id"]: (m["parent"], m["state"]) for m in models.json()["data"]}
            assert listed == {MODEL: (None, "unavailable"), "a1": (MODEL, "unavailable")}


def test_models_are_listed_while_they_load() -> None:
    engines = pool(1, start_delay_s=30)
    app = create_app(Settings(engines=[], auth=NO_AUTH), engines=engines)
    with serve(app) as url:
        (model,) = httpx.get(url + "/v1/models").json()["data"]
        assert (model["id"], model["object"], model["state"]) == (MODEL, "model", "loading")


def test_full_backends_queue_then_429_with_retry_after() -> None:
    engines = pool(2, first_token_delay_s=1.0)
    with gateway(engines, max_in_flight=1, queue_size=1) as (url, _):
        responses = burst(url, 4)
        assert sorted(r.status_code for r in responses) == [200, 200, 200, 429]
        (refused,) = [r for r in responses if r.status_code == 429]
        error = assert_error(refused, 429)
        assert error["code"] == "server_overloaded"
        assert refused.headers["retry-after"] == "1"


def test_queue_timeout_is_429() -> None:
    engines = pool(1, first_token_delay_s=1.5)
    with gateway(engines, max_in_flight=1, queue_timeout_s=0.2) as (url, _):
        statuses = sorted(r.status_code for r in burst(url, 2))
        assert statuses == [200, 429]


def test_adapters_are_loaded_on_every_replica(tmp_path: Path) -> None:
    engines = pool(2)
    with gateway(engines, adapter_root=tmp_path) as (url, _):
        make_adapter(tmp_path / "a1", base=MODEL)
        with httpx.Client(base_url=url) as client:
            r = client.post("/v1/adapters", json={"name": "a1", "path": "a1"})
            assert r.status_code == 200, r.text
            assert r.json()["backends"] == ["b0", "b1"]
            assert all(e.adapters.keys() == {"a1"} for e in engines)
            seen = backends_of(url, 6, model="a1")
            assert sum(seen.values()) == 6
            assert client.delete("/v1/adapters/a1").status_code == 200
            assert all(not e.adapters for e in engines)


def test_a_replica_restarted_between_probes_gets_its_adapters_back(tmp_path: Path) -> None:
    engines = pool(2)
    with gateway(engines, adapter_root=tmp_path, policy="round_robin") as (url, _):
        load_adapter(url, tmp_path)
        restart(engines[0])
        assert not engines[0].adapters
        assert wait_until(lambda: "a1" in engines[0].adapters, timeout=5)
        assert backends_of(url, 4, model="a1") == {"b0": 2, "b1": 2}


def test_an_adapter_a_replica_lost_is_retried_elsewhere_and_put_back(tmp_path: Path) -> None:
    """A replica that lost an adapter (vLLM's 404; here the engine drops it behind the
    gateway's back, and reports no restart) is not ejected for it: the request goes
    to another replica, and the next probe loads the adapter there again."""
    engines = pool(2)
    with gateway(engines, adapter_root=tmp_path, policy="round_robin") as (url, app):
        load_adapter(url, tmp_path)
        (lost,) = engines[0].adapters.values()
        asyncio.run(engines[0].unload_adapter(lost))
        assert sum(backends_of(url, 4, model="a1").values()) == 4  # every one answered
        backend = app.state.shared.catalog.models[0].pool.backends[0]
        assert backend.breaker.failures == 0
        assert wait_until(lambda: "a1" in engines[0].adapters, timeout=5)


def test_a_generation_that_broke_before_output_is_retried_a_client_error_never() -> None:
    broken = ScriptedEngine("b0", MODEL, ScriptedConfig(fail_after_tokens=0))
    engines = [broken, ScriptedEngine("b1", MODEL, ScriptedConfig())]
    with gateway(engines, policy="round_robin") as (url, _):
        assert backends_of(url, 4) == {"b1": 4}  # b0's failures answered by b1
        assert broken.generations == 4  # tried first every time: not ejected for it
        with httpx.Client(base_url=url) as client:
            with client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as r:
                assert r.status_code == 200
                assert r.headers["x-switchyard-backend"] == "b1"
            retried = _retries(client)
            too_long = {**BODY, "max_tokens": 10**6}
            for _ in range(2):
                assert_error(client.post("/v1/chat/completions", json=too_long), 400)
            assert _retries(client) == retried


def test_a_request_that_failed_every_attempt_says_how_each_went() -> None:
    engines = pool(2, fail_after_tokens=0)
    with gateway(engines, policy="round_robin", max_attempts=3) as (url, _):
        r = httpx.post(url + "/v1/chat/completions", json=BODY)
    message = str(assert_error(r, 500)["message"])
    assert message.startswith("The engine failed while generating: 3 attempt(s) failed: b0: ")
    assert [part.split(":")[0] for part in message.split("; ")[1:]] == ["b1", "b0"]
    assert sum(e.generations for e in engines) == 3


def _retries(client: httpx.Client) -> float:
    line = f'switchyard_retries_total{{model="{MODEL}"}} '
    text = client.get("/metrics").text
    (value,) = [x.removeprefix(line) for x in text.splitlines() if x.startswith(line)]
    return float(value)


def test_an_adapter_whose_files_changed_is_not_restored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What a restarted replica gets back is what was validated: the stored copy's
    digest is checked again, and a copy changed since is left off (an error says so)."""
    engines = pool(2)
    with gateway(engines, adapter_root=tmp_path, policy="round_robin") as (url, _):
        load_adapter(url, tmp_path)
        stored = Path(engines[0].adapters["a1"].path)
        assert stored.parent == (tmp_path / ".switchyard-store").resolve()
        (stored / "adapter_model.safetensors").write_bytes(b"tampered")
        with caplog.at_level(logging.ERROR, logger="switchyard"):
            restart(engines[0])
            assert wait_until(lambda: "changed since it was loaded" in caplog.text, timeout=5)
        assert "a1" not in engines[0].adapters
        assert "a1" in engines[1].adapters  # the other replica keeps serving it
