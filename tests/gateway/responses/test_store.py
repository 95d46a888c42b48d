"""The response store: both backends' contract (a real redis-server for Redis), its
bounds, and what the routes do when Redis is gone (scripted engine: the test double)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from engines.scripted import ScriptedEngine
from gateway.app import create_app
from gateway.responses.store import (
    MemoryStore,
    RecordTooLarge,
    RedisStore,
    ResponseStore,
    Stored,
    StoreUnavailable,
)
from gateway.settings import ResponseStoreSettings
from tests.gateway.conftest import settings
from tests.redis_server import RedisServer
from tests.servers import free_port, serve, wait_until


def record(text: str = "x") -> Stored:
    item = {"id": "msg_1", "type": "message", "role": "user", "content": [{"text": text}]}
    return Stored("alice", {"id": "resp_1", "object": "response"}, [item], [item])


async def contract(store: ResponseStore) -> None:
    await store.put("resp_1", record())
    assert await store.get("resp_1") == record()
    assert await store.get("resp_2") is None
    assert await store.delete("resp_1") is True
    assert await store.delete("resp_1") is False
    assert await store.get("resp_1") is None


async def test_memory_store_keeps_its_bounds() -> None:
    await contract(MemoryStore(ttl_s=60, max_bytes=10_000, max_record_bytes=1_000))
    store = MemoryStore(ttl_s=60, max_bytes=1_000, max_record_bytes=1_000)
    with pytest.raises(RecordTooLarge):
        await store.put("big", record("y" * 2_000))
    for i in range(10):
        await store.put(f"resp_{i}", record())
    assert store.size <= 1_000
    assert await store.get("resp_9") is not None
    assert await store.get("resp_0") is None  # the oldest went first
    short = MemoryStore(ttl_s=0.05, max_bytes=10_000, max_record_bytes=10_000)
    await short.put("resp_1", record())
    await asyncio.sleep(0.1)
    assert await short.get("resp_1") is None


async def test_redis_store_contract_ttl_and_garbage(redis_server: RedisServer) -> None:
    config = ResponseStoreSettings(backend="redis", redis_url=redis_server.url, ttl_s=0.3)
    store = RedisStore(config)
    await contract(store)
    await store.put("resp_t", record())
    await asyncio.sleep(0.5)
    assert await store.get("resp_t") is None  # expired
    await store._client.set(config.prefix + "bad", b"not zlib")
    with pytest.raises(StoreUnavailable):
        await store.get("bad")
    redis_server.stop()
    with pytest.raises(StoreUnavailable):
        await store.get("resp_1")
    await store.aclose()


@pytest.fixture
def gone_redis_url(engine: ScriptedEngine) -> Iterator[str]:
    """A gateway whose response store is a Redis nobody listens on."""
    store = ResponseStoreSettings(
        backend="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2
    )
    app = create_app(settings(responses=store), engines=[engine])
    with serve(app) as url:
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=10)
        yield url


def test_redis_down_stateless_answers_stateful_503(gone_redis_url: str) -> None:
    url = gone_redis_url + "/v1/responses"
    body = {"model": "scripted", "input": "hi", "temperature": 0}
    r = httpx.post(url, json=body)
    assert r.status_code == 200, r.text
    assert r.json()["store"] is False  # answered, and it says it was not kept
    r = httpx.post(url, json={**body, "previous_response_id": "resp_1"})
    assert r.status_code == 503
    assert "response store is unreachable" in r.json()["error"]["message"]
    r = httpx.get(url + "/resp_1")
    assert r.status_code == 503
    streamed = httpx.post(url, json={**body, "stream": True})
    assert streamed.status_code == 200
    assert '"store":false' in streamed.text.split("response.completed")[-1]
