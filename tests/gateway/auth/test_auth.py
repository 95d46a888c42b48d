"""API keys and per-key limits through HTTP, in front of the scripted engine: 401 for
missing, wrong and revoked keys; models a key may not use are 404 like models that
are not here; admin routes; max_tokens caps; RPM and TPM with OpenAI's headers and
recovery; limits shared by two gateways through a real redis-server; Redis down
(fail open or closed); no public bind without auth; labels, never keys, in metrics."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engines.scripted import ScriptedEngine
from gateway import cli
from gateway.app import create_app
from gateway.auth.keys import KeyConfigError, digest
from gateway.settings import Settings
from tests.gateway.conftest import scripted
from tests.redis_server import RedisServer
from tests.servers import serve, wait_until

USER, ADMIN, NARROW = "sy-user-key", "sy-admin-key", "sy-narrow-key"
CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


def key(secret: str, label: str, **fields: Any) -> dict[str, Any]:
    return {"label": label, "key_sha256": digest(secret), "models": ["*"], **fields}


KEYS = [
    key(USER, "team-a"),
    key(ADMIN, "ops", admin=True),
    key(NARROW, "narrow", models=["other"], max_tokens=3),
]


@contextlib.contextmanager
def gateway(
    engines: list[ScriptedEngine] | None = None,
    clock: Callable[[], float] | None = None,
    **auth: Any,
) -> Iterator[str]:
    """A gateway with these auth settings; `clock`, if given, is its memory rate
    limiter's (one the test moves: buckets refill only when it says)."""
    engines = engines or [scripted(), scripted("other")]
    settings = Settings(auth={"keys": KEYS, **auth}, cache={"backend": "none"})
    app = create_app(settings, engines=engines)
    if clock is not None:
        app.state.shared.limiter.clock = clock
    with serve(app) as url:
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=10)
        yield url


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with gateway() as url:
        yield url


def chat(url: str, secret: str | None, body: dict[str, Any] = CHAT) -> httpx.Response:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=30)


def error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return body


def test_missing_wrong_and_malformed_keys_are_401(url: str) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {USER}"}):
        r = httpx.post(url + "/v1/chat/completions", json=CHAT, headers=headers)
        assert error(r, 401)["code"] == "invalid_api_key"
        assert r.headers["www-authenticate"] == "Bearer"
        assert "x-request-id" in r.headers
    assert chat(url, USER).status_code == 200
    assert error(httpx.get(url + "/v1/models"), 401)["type"] == "invalid_request_error"


def test_a_key_sees_and_uses_only_its_models(url: str) -> None:
    hidden = error(chat(url, NARROW), 404)  # "scripted" exists, but not for this key
    missing = error(chat(url, NARROW, {**CHAT, "model": "nowhere"}), 404)
    assert hidden["code"] == missing["code"] == "model_not_found"
    assert hidden["message"].replace("scripted", "nowhere") == missing["message"]
    assert chat(url, NARROW, {**CHAT, "model": "other"}).status_code == 200
    listed = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {NARROW}"})
    assert [m["id"] for m in listed.json()["data"]] == ["other"]


def test_admin_routes_refuse_other_keys(url: str) -> None:
    for method, path in (
        ("GET", "/v1/adapters"),
        ("POST", "/v1/adapters"),
        ("DELETE", "/v1/adapters/x"),
    ):
        r = httpx.request(method, url + path, headers={"Authorization": f"Bearer {USER}"})
        assert error(r, 403)["type"] == "permission_error"
    r = httpx.get(url + "/v1/adapters", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200


def test_open_paths_say_no_more_than_needed(url: str) -> None:
    assert httpx.get(url + "/health").status_code == 200
    anonymous = httpx.get(url + "/ready").json()
    assert anonymous["models"] == {"scripted": "ready", "other": "ready"}
    assert "backends" not in anonymous
    admin = httpx.get(url + "/ready", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert "backends" in admin
    assert httpx.get(url + "/metrics").status_code == 401  # unless public_metrics
    assert (
        "access-control-allow-origin"
        not in httpx.options(
            url + "/v1/models",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        ).headers
    )


def test_metrics_need_a_key_by_default() -> None:
    with gateway() as url:
        error(httpx.get(url + "/metrics"), 401)
        r = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {USER}"})
        assert r.status_code == 200


def test_max_tokens_cap_bounds_and_defaults(url: str) -> None:
    body = {**CHAT, "model": "other"}
    over = error(chat(url, NARROW, {**body, "max_tokens": 4}), 400)
    assert over["param"] == "max_tokens"
    assert "cap of 3" in over["message"]
    r = chat(url, NARROW, body).json()  # no max_tokens: the cap applies
    assert r["usage"]["completion_tokens"] == 3
    assert r["choices"][0]["finish_reason"] == "length"


def test_revoked_by_editing_the_keys_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"- {{label: file-key, key_sha256: {digest('sy-file')}, models: ['*']}}\n")
    with gateway(keys_file=keys) as url:
        assert chat(url, "sy-file").status_code == 200
        entry = f"label: file-key, key_sha256: {digest('sy-file')}, models: ['*']"
        keys.write_text(f"- {{{entry}, revoked: true}}\n")
        assert wait_until(lambda: chat(url, "sy-file").status_code == 401, timeout=5)
        assert chat(url, USER).status_code == 200  # the config's keys stay


def test_requests_per_minute() -> None:
    keys = [key(USER, "rpm", rpm=30), key(ADMIN, "ops", admin=True)]
    now = [time.monotonic()]  # the limiter's clock: 30 requests leave none, however slow
    with gateway(keys=keys, clock=lambda: now[0]) as url:
        for _ in range(30):
            r = chat(url, USER)
            assert r.status_code == 200
        assert r.headers["x-ratelimit-limit-requests"] == "30"
        assert r.headers["x-ratelimit-remaining-requests"] == "0"
        refused = chat(url, USER)
        body = error(refused, 429)
        assert (body["type"], body["code"]) == ("rate_limit_error", "rate_limit_exceeded")
        assert "30 requests per minute" in body["message"]
        wait = int(refused.headers["retry-after"])
        assert wait == 2  # one request in 60 / 30 s
        now[0] += wait
        assert chat(url, USER).status_code == 200  # one request refilled
        assert (
            'switchyard_rate_limited_total{key="rpm",limit="requests"} 1.0'
            in httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
        )


def test_tokens_per_minute() -> None:
    now = [time.monotonic()]  # the limiter's clock: no refill while the requests run
    with gateway(keys=[key(USER, "tpm", tpm=600)], clock=lambda: now[0]) as url:
        statuses = [chat(url, USER).status_code for _ in range(80)]
        assert statuses[0] == 200
        assert 429 in statuses  # each request costs ~16 tokens; 600 run out
        refused = chat(url, USER)
        assert error(refused, 429)["message"].startswith("Rate limit reached")
        assert refused.headers["x-ratelimit-limit-tokens"] == "600"
        wait = int(refused.headers["retry-after"])
        assert wait <= 5  # a debt of at most one request's tokens, at 10 a second
        now[0] += wait
        assert chat(url, USER).status_code == 200


def test_limits_shared_through_redis(redis_server: RedisServer) -> None:
    shared = {"rate_limit": {"backend": "redis", "redis_url": redis_server.url}}
    keys = [key(USER, "shared", rpm=20)]
    with gateway(keys=keys, **shared) as a, gateway(keys=keys, **shared) as b:
        for i in range(20):
            assert chat(a if i % 2 else b, USER).status_code == 200
        assert error(chat(a, USER), 429)["code"] == "rate_limit_exceeded"
        assert error(chat(b, USER), 429)["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize(("on_error", "status"), [("allow", 200), ("deny", 503)])
def test_redis_down_fails_open_or_closed(
    redis_server: RedisServer, on_error: str, status: int
) -> None:
    limits = {"backend": "redis", "redis_url": redis_server.url, "on_redis_error": on_error}
    with gateway(keys=[key(USER, "k", rpm=100)], rate_limit=limits) as url:
        assert chat(url, USER).status_code == 200
        redis_server.stop()
        r = chat(url, USER)
        assert r.status_code == status, r.text
        if status == 503:
            assert "rate limiter" in error(r, 503)["message"]


def test_labels_not_keys_in_metrics_and_logs(url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="switchyard.access"):
        chat(url, USER)
    assert 'key="team-a"' not in httpx.get(url + "/metrics").text  # a public scrape
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
    assert 'switchyard_key_requests_total{key="team-a",status="200"}' in text
    assert USER not in text
    assert USER not in caplog.text
    assert '"key": "team-a"' in caplog.text or '"key":"team-a"' in caplog.text


def test_cached_answers_are_not_shared_across_keys() -> None:
    keys = [key(USER, "a"), key(ADMIN, "b")]
    settings = Settings(auth={"keys": keys})
    app = create_app(settings, engines=[scripted()])
    with serve(app) as url:
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=10)
        assert chat(url, USER).headers["x-switchyard-cache"] == "miss"
        assert chat(url, USER).headers["x-switchyard-cache"] == "hit"
        assert chat(url, ADMIN).headers["x-switchyard-cache"] == "miss"


def test_start_up_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(KeyConfigError, match="no API keys are configured"):
        create_app(Settings(), engines=[scripted()])
    config = tmp_path / "c.yaml"
    config.write_text("engines: [{name: s, kind: scripted, model_id: s}]\n")
    assert cli.main(["serve", "--config", str(config), "--host", "0.0.0.0", "--no-auth"]) == 2
    assert "refusing to serve on 0.0.0.0 without API keys" in capsys.readouterr().err
    assert cli.main(["serve", "--config", str(config)]) == 2  # auth on, no keys
    assert "no API keys are configured" in capsys.readouterr().err
