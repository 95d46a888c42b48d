"""The adapter ledger between two gateways' registries in this process, as two workers
(a file in their run directory) or two gateway replicas (a real `redis-server`) use
it (gateway/adapter_ledger.py), in front of one `vllm serve` double they share: the
orderings real pairs only meet by chance, driven one step at a time
(tests/gateway/test_workers.py drives real workers, tests/e2e/test_replicas.py two
gateway processes and real replicas)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from gateway.adapter_ledger import FileLedger, Ledger, RedisLedger, View
from gateway.app import create_app
from gateway.catalog import Catalog
from gateway.redis_client import connect
from gateway.settings import BalancerSettings, EngineSettings, Settings
from tests.gateway.test_adapters import make_adapter
from tests.gateway.test_workers import CountingDouble
from tests.redis_server import RedisServer
from tests.servers import serve, wait_until
from tests.settings import NO_AUTH


@pytest.fixture
def double() -> CountingDouble:
    return CountingDouble()


class Store:
    """Where the ledgers under test live: a file in a directory, or a real
    `redis-server`; `open` gives a worker its ledger, `wipe` loses everything (a
    Redis restarted without persistence)."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.directory = tmp_path
        self.redis = RedisServer(tmp_path) if kind == "redis" else None

    def open(self, worker: str) -> Ledger:
        if self.redis is None:
            return FileLedger(self.directory, worker, stale_after_s=60)
        return RedisLedger(connect(self.redis.url, 5.0), "t:", worker, 60, 5.0)

    def wipe(self) -> None:
        if self.redis is None:
            (self.directory / "adapters.json").unlink()
        else:
            self.redis.stop()
            self.redis.start()


@pytest.fixture(params=["file", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    store = Store(request.param, tmp_path)
    if store.redis is not None:
        store.redis.start()
    try:
        yield store
    finally:
        if store.redis is not None:
            store.redis.stop()


@pytest.fixture
async def pair(
    double: CountingDouble, tmp_path: Path, store: Store
) -> AsyncIterator[tuple[Catalog, Catalog]]:
    """Two workers' catalogs (started, probed once) sharing a ledger."""
    root = tmp_path / "adapters"
    make_adapter(root / "a1", base="base")
    with serve(double.app()) as url:
        options = {"url": url, "upstream_model": "up-model", "enable_lora": True, "max_loras": 4}
        engine = EngineSettings(
            name="up", kind="openai_remote", model_id="base", options=options, adapter_root=root
        )
        settings = Settings(auth=NO_AUTH, engines=[engine], balancer=BalancerSettings())
        catalogs = []
        for worker in ("a", "b"):
            catalog: Catalog = create_app(settings).state.shared.catalog
            catalog.adapters.share(store.open(worker), catalog.host)
            await catalog.start_all()
            catalogs.append(catalog)
        try:
            yield catalogs[0], catalogs[1]
        finally:
            for catalog in catalogs:
                await catalog.aclose()


async def loaded_on_both(a: Catalog, b: Catalog, root: Path) -> str:
    record = await a.adapters.load("a1", root / "a1", "base", a.host("base"))
    await b.adapters.follow()
    assert b.adapters.get("a1") is not None
    return f"a1@{record.adapter.digest[:12]}"


async def tombstoned(catalog: Catalog, name: str) -> None:
    """Until the ledger says `name` was unloaded (as `catalog`'s worker reads it)."""
    registry = catalog.adapters
    for _ in range(400):
        entries = (await registry._ledger.sync(registry._view())).entries  # type: ignore[union-attr]
        if name in entries and entries[name].removed:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"{name} was never unloaded in the ledger")


async def test_an_unloaded_adapter_is_not_put_back_by_a_worker_that_did_not_follow_yet(
    pair: tuple[Catalog, Catalog], double: CountingDouble, tmp_path: Path
) -> None:
    """A unloads; before B follows, the upstream restarts empty and B's probe finds
    the adapter lost there: B follows the ledger before restoring, so it does not
    load it again."""
    a, b = pair
    name = await loaded_on_both(a, b, tmp_path / "adapters")
    loads = double.loads
    unload = asyncio.create_task(a.adapters.unload("a1"))  # waits for B to let go
    await tombstoned(a, "a1")
    double.restart()
    await b.prober.probe_all()  # sees the adapter gone, restores the backend
    assert double.loads == loads
    assert name not in double.adapters
    await asyncio.wait_for(unload, timeout=30)
    assert name not in double.adapters
    assert a.adapters.get("a1") is None
    assert b.adapters.get("a1") is None


async def test_a_version_leaves_the_upstream_once_no_worker_has_requests_on_it(
    pair: tuple[Catalog, Catalog], double: CountingDouble, tmp_path: Path
) -> None:
    """A request in flight on B keeps the adapter on the upstream they share while A
    unloads it: A's unload answers once B followed and that request finished."""
    a, b = pair
    name = await loaded_on_both(a, b, tmp_path / "adapters")
    record = b.adapters.get("a1")
    assert record is not None
    record.acquire()  # B's request on it
    unload = asyncio.create_task(a.adapters.unload("a1"))
    await tombstoned(a, "a1")
    await b.adapters.follow()  # B stops routing to it; its request goes on
    assert b.adapters.get("a1") is None
    for _ in range(10):  # A's unload polls the ledger meanwhile, and waits
        await asyncio.sleep(0.05)
        assert not unload.done()
        assert name in double.adapters
    record.release()
    await asyncio.wait_for(unload, timeout=30)
    assert name not in double.adapters


async def test_a_ledger_that_lost_its_data_is_rebuilt_from_the_gateways(
    pair: tuple[Catalog, Catalog], store: Store, tmp_path: Path
) -> None:
    """Redis restarts empty (no persistence): its sequence numbers start again below
    what the workers followed. Each worker sees a new epoch, publishes what it serves
    again, and loads made since are followed as before."""
    a, b = pair
    root = tmp_path / "adapters"
    await loaded_on_both(a, b, root)
    store.wipe()
    await a.adapters.follow()
    await b.adapters.follow()
    make_adapter(root / "a1v2", base="base", rank=4)  # a new version of a1
    reloaded = await a.adapters.load("a1", root / "a1v2", "base", a.host("base"))
    make_adapter(root / "a2", base="base")
    await a.adapters.load("a2", root / "a2", "base", a.host("base"))
    await b.adapters.follow()
    assert b.adapters.get("a2") is not None
    followed = b.adapters.get("a1")
    assert followed is not None
    assert followed.adapter.digest == reloaded.adapter.digest
    entries = (await store.open("observer").sync(View(frozenset(), {}))).entries
    assert sorted(entries) == ["a1", "a2"]


def test_a_load_the_ledger_cannot_record_is_a_503_and_changes_nothing(
    double: CountingDouble, tmp_path: Path
) -> None:
    """Redis is down: a load through the API answers an OpenAI-shaped 503 saying what
    to check, and leaves nothing on the upstream; once Redis is back, it loads."""
    root = tmp_path / "adapters"
    make_adapter(root / "a1", base="base")
    server = RedisServer(tmp_path)
    server.start()
    with serve(double.app()) as upstream:
        options = {"url": upstream, "upstream_model": "up", "enable_lora": True, "max_loras": 4}
        engine = {"name": "up", "kind": "openai_remote", "model_id": "base", "options": options}
        registry = {"backend": "redis", "redis_url": server.url, "timeout_s": 1.0}
        settings = Settings(
            auth=NO_AUTH,
            engines=[{**engine, "adapter_root": str(root)}],
            adapter_registry=registry,
        )
        app = create_app(settings)
        with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            assert wait_until(lambda: app.state.shared.catalog.ready, timeout=10)
            server.stop()
            r = client.post("/v1/adapters", json={"name": "a1", "path": "a1"})
            assert r.status_code == 503, r.text
            error = r.json()["error"]
            assert error["type"] == "service_unavailable"
            assert "adapter registry in Redis" in error["message"]
            assert double.adapters == {}
            assert client.get("/v1/adapters").json()["data"] == []
            server.start()
            r = client.post("/v1/adapters", json={"name": "a1", "path": "a1"})
            assert r.status_code == 200, r.text
            assert list(double.adapters) == [f"a1@{r.json()['digest'][:12]}"]
            server.stop()


async def test_a_replica_that_stops_beating_holds_nothing_once_its_beat_expires(
    tmp_path: Path,
) -> None:
    """Liveness is Redis's key expiry, not any host's clock: a gateway that died
    without leaving stops holding its versions `stale_after_s` after its last beat,
    and leaves the set of workers."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        a = RedisLedger(connect(server.url, 5.0), "t:", "a", 60, 5.0)
        b = RedisLedger(connect(server.url, 5.0), "t:", "b", 0.5, 5.0)
        await b.sync(View(frozenset({"x@d"}), {}))
        assert (await a.sync(View(frozenset(), {}))).held_elsewhere == {"x@d"}
        await asyncio.sleep(0.7)
        assert (await a.sync(View(frozenset(), {}))).held_elsewhere == frozenset()
        assert await connect(server.url, 5.0).smembers("t:workers") == {b"a"}
        await a.aclose()
    finally:
        server.stop()
