"""Redis with a password (`requirepass`, as the deploy files run it): every
Redis-backed section reads it from the environment variable its `password_env`
names, and a gateway whose variable is not set refuses to start, saying which."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis
import yaml

from gateway import redis_client
from gateway.adapter_ledger import RedisLedger, View
from gateway.auth.limits import RedisLimiter
from gateway.cache.responses import ResponseCache
from gateway.settings import AdapterRegistrySettings, CacheSettings, RateLimitSettings
from tests.redis_server import RedisServer

PASSWORD = "s3cret-redis"


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, password=PASSWORD)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_sections_authenticate_with_the_password_their_variable_holds(
    locked: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = locked.url
    without = redis_client.connect(url, 2.0)
    with pytest.raises(redis.AuthenticationError):
        await without.ping()
    await without.aclose()

    monkeypatch.setenv("REDIS_PASSWORD", PASSWORD)
    registry = AdapterRegistrySettings(
        backend="redis", redis_url=url, password_env="REDIS_PASSWORD"
    )
    ledger = RedisLedger(redis_client.connect_section(registry), "t:", "a", 60, 2.0)
    assert (await ledger.sync(View(frozenset({"x@d"}), {}))).entries == {}
    await ledger.aclose()

    cache = ResponseCache.from_settings(
        CacheSettings(backend="redis", redis_url=url, timeout_s=2.0, password_env="REDIS_PASSWORD")
    )
    assert cache.store is not None
    await cache.store.set("k", b"v")
    assert await cache.store.get("k") == b"v"
    await cache.aclose()

    limits = RateLimitSettings(
        backend="redis", redis_url=url, timeout_s=2.0, password_env="REDIS_PASSWORD"
    )
    limiter = RedisLimiter(limits)
    assert await limiter._client.ping()
    await limiter.aclose()


def test_a_gateway_without_its_redis_password_refuses_to_start(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    engine = {"name": "up", "kind": "openai_remote", "model_id": "m",
              "options": {"url": "http://127.0.0.1:9"}}  # fmt: skip
    registry = {"backend": "redis", "password_env": "SY_TEST_NO_SUCH_PASSWORD"}
    config.write_text(yaml.safe_dump({"engines": [engine], "adapter_registry": registry}))
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--no-auth"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "SY_TEST_NO_SUCH_PASSWORD" in done.stderr
    assert "Traceback" not in done.stderr
