"""The adapter ledger between two gateways' registries in this process, as two workers
use it (gateway/adapter_ledger.py), in front of one `vllm serve` double they share:
the orderings a real pair of workers only meets by chance, driven one step at a time
(tests/gateway/test_workers.py drives real workers)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.adapter_ledger import FileLedger
from gateway.app import create_app
from gateway.catalog import Catalog
from gateway.settings import BalancerSettings, EngineSettings, Settings
from tests.gateway.test_adapters import make_adapter
from tests.gateway.test_workers import CountingDouble
from tests.servers import serve
from tests.settings import NO_AUTH


@pytest.fixture
def double() -> CountingDouble:
    return CountingDouble()


@pytest.fixture
async def pair(double: CountingDouble, tmp_path: Path) -> AsyncIterator[tuple[Catalog, Catalog]]:
    """Two workers' catalogs (started, probed once) sharing a ledger in `tmp_path`."""
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
            catalog.adapters.share(FileLedger(tmp_path, worker, stale_after_s=60), catalog.host)
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


async def tombstoned(ledger: Path, name: str) -> None:
    """Until the ledger says `name` was unloaded."""

    def removed() -> bool:
        entries = json.loads(ledger.read_text())["adapters"] if ledger.exists() else {}
        return bool(entries.get(name, {}).get("removed"))

    for _ in range(400):
        if await asyncio.to_thread(removed):
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
    await tombstoned(tmp_path / "adapters.json", "a1")
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
    await tombstoned(tmp_path / "adapters.json", "a1")
    await b.adapters.follow()  # B stops routing to it; its request goes on
    assert b.adapters.get("a1") is None
    for _ in range(10):  # A's unload polls the ledger meanwhile, and waits
        await asyncio.sleep(0.05)
        assert not unload.done()
        assert name in double.adapters
    record.release()
    await asyncio.wait_for(unload, timeout=30)
    assert name not in double.adapters
