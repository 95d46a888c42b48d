"""The Redis-backed response cache through HTTP, against a real redis-server: two
gateways share hits; Redis killed, stalled or answering garbage never fails a request
(the cache fails open and counts it), and caching resumes when Redis is back."""

from __future__ import annotations

import contextlib
import logging
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from engines.scripted import ScriptedEngine
from gateway.app import create_app
from gateway.settings import CacheSettings, Settings
from tests.gateway.cache.test_response_cache import CHAT, metrics, post
from tests.gateway.conftest import scripted
from tests.redis_server import RedisServer
from tests.servers import serve, wait_until
from tests.settings import NO_AUTH


@contextlib.contextmanager
def gateway(engine: ScriptedEngine, server: RedisServer, **cache: Any) -> Iterator[str]:
    options = {"backend": "redis", "redis_url": server.url, "retry_after_s": 0.2, **cache}
    app = create_app(Settings(cache=CacheSettings(**options), auth=NO_AUTH), engines=[engine])
    with serve(app) as url:
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=10)
        yield url


def cache_header(url: str, body: dict[str, Any] = CHAT) -> str:
    return post(url, body).headers["x-switchyard-cache"]


def errors(url: str, operation: str) -> float:
    line = f'switchyard_cache_errors_total{{operation="{operation}"}} '
    (value,) = [x.removeprefix(line) for x in metrics(url).splitlines() if x.startswith(line)]
    return float(value)


@pytest.fixture
def engine() -> ScriptedEngine:
    return scripted()


def test_two_gateways_share_hits(redis_server: RedisServer, engine: ScriptedEngine) -> None:
    other = scripted()
    with gateway(engine, redis_server) as a, gateway(other, redis_server) as b:
        assert cache_header(a) == "miss"
        assert cache_header(b) == "hit"
        assert (engine.generations, other.generations) == (1, 0)
        assert post(a, CHAT).json()["choices"] == post(b, CHAT).json()["choices"]
    (key,) = redis.Redis.from_url(redis_server.url, decode_responses=True).keys("*")
    assert key.startswith("switchyard:sy3:")  # prefix, then the format version


def test_redis_killed_then_restarted(redis_server: RedisServer, engine: ScriptedEngine) -> None:
    with gateway(engine, redis_server) as url:
        cache_header(url)
        assert cache_header(url) == "hit"
        redis_server.stop()
        for _ in range(5):  # every request still answered, by the engine
            assert cache_header(url) == "miss"
        assert errors(url, "get") >= 1
        redis_server.start()  # same port, empty
        assert wait_until(lambda: cache_header(url) == "hit", timeout=5)


def test_stalled_redis_costs_at_most_the_timeout(
    redis_server: RedisServer, engine: ScriptedEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis that accepts but never answers (SIGSTOP): the lookup ends with the
    timeout's error and the engine answers while Redis is still stalled; the store of
    that answer is not even tried (one timeout per request, not two)."""
    with gateway(engine, redis_server, timeout_s=0.1, retry_after_s=1) as url:
        cache_header(url)
        redis_server.pause()
        try:
            with caplog.at_level(logging.WARNING, logger="switchyard"):
                r = post(url, CHAT)
            assert r.headers["x-switchyard-cache"] == "miss"
            assert engine.generations == 2
            assert (errors(url, "get"), errors(url, "set")) == (1, 0)
            (failure,) = [m for m in caplog.messages if "response cache" in m]
            assert "get failed" in failure
            assert "TimeoutError" in failure
        finally:
            redis_server.resume()
        assert wait_until(lambda: cache_header(url) == "hit", timeout=5)


def test_garbage_in_redis_is_a_miss(redis_server: RedisServer, engine: ScriptedEngine) -> None:
    with gateway(engine, redis_server) as url:
        cache_header(url)
        raw = redis.Redis.from_url(redis_server.url)
        (key,) = raw.keys("switchyard:*")
        raw.set(key, zlib.compress(b'{"not": "an entry"}'))
        assert cache_header(url) == "miss"
        assert errors(url, "decode") == 1
        assert cache_header(url) == "hit"  # the miss stored a good entry over it
        assert engine.generations == 2


def test_a_request_never_waits_on_redis_after_a_failure(
    redis_server: RedisServer, engine: ScriptedEngine
) -> None:
    with gateway(engine, redis_server, retry_after_s=60) as url:
        redis_server.stop()
        cache_header(url)
        failed = errors(url, "get")
        for _ in range(3):
            assert httpx.post(url + "/v1/chat/completions", json=CHAT).status_code == 200
        assert errors(url, "get") == failed  # not even tried while it is known down
