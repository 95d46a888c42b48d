"""What callers who are not admins learn of the gateway's insides: nothing. Every kind
of server-side failure (a backend answering 500 with its own words, a backend that
refuses connections, a stream cut after its first chunk, the pool with nothing
left) reaches a plain key as what happened and the request id, never an upstream
URL, address, body or backend name, and without `x-switchyard-backend`; an admin
key reads the detail, and the log keeps it under the request id. `/metrics`
scraped without an admin key has no key labels.

The broken upstreams are test doubles (tests/gateway/balancer/test_cut_answers.py)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.auth.keys import digest
from gateway.settings import BalancerSettings, Settings
from tests.gateway.balancer.test_cut_answers import broken_upstream
from tests.servers import free_port, serve, wait_until

USER, ADMIN = "sy-plain", "sy-admin"
KEYS = [
    {"label": "plain", "key_sha256": digest(USER), "models": ["*"], "tpm": 10**6},
    {"label": "ops", "key_sha256": digest(ADMIN), "models": ["*"], "admin": True},
]
BODY = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@contextlib.contextmanager
def gateway(**upstreams: str) -> Iterator[str]:
    """One model per upstream, served by a backend named `secret-<model>`."""
    engines = [
        {"name": f"secret-{model}", "kind": "openai_remote", "model_id": model,
         "options": {"url": url, "upstream_model": "up-model", "token_ids": False}}
        for model, url in upstreams.items()
    ]  # fmt: skip
    settings = Settings(
        engines=engines,
        auth={"keys": KEYS, "public_metrics": True},
        cache={"backend": "none"},
        balancer=BalancerSettings(max_attempts=1),
    )
    app = create_app(settings)
    with serve(app) as url:
        assert wait_until(lambda: app.state.shared.catalog.models, timeout=10)
        yield url


def ask(url: str, secret: str, model: str, **body: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {secret}"}
    return httpx.post(
        url + "/v1/chat/completions", json={**BODY, "model": model, **body}, headers=headers
    )


def forbidden(*ports: str) -> list[str]:
    return ["http://", "127.0.0.1", "secret-", "injected fault", "Traceback", *ports]


def test_failures_tell_plain_keys_what_happened_and_admins_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = str(free_port())
    with serve(broken_upstream("fail")) as failing, serve(broken_upstream("cut")) as cut:
        ports = [failing.rsplit(":", 1)[1], cut.rsplit(":", 1)[1], dead]
        with gateway(failing=failing, cut=cut, dead=f"http://127.0.0.1:{dead}") as url:
            seen: list[str] = []
            with caplog.at_level(logging.WARNING, logger="switchyard"):
                for model in ("failing", "dead"):
                    for _ in range(2):  # the failure, then the pool with nothing left
                        plain = ask(url, USER, model)
                        assert plain.status_code == 503, plain.text
                        assert "request id" in plain.json()["error"]["message"]
                        seen.append(plain.text + str(plain.headers))
                cut_stream = ask(url, USER, "cut", stream=True)
                # The error event after "Hel" says what happened, and why not resumed.
                assert "was cut after" in cut_stream.text
                assert "cannot be resumed" in cut_stream.text
                seen.append(cut_stream.text + str(cut_stream.headers))
            for text in seen:
                for word in forbidden(*ports):
                    assert word not in text, (word, text)
            assert "injected fault" in caplog.text  # the detail, logged for admins
            admin = ask(url, ADMIN, "failing")
            assert admin.status_code == 503
            assert "injected fault" in admin.text  # an admin reads why
            admin_stream = ask(url, ADMIN, "cut", stream=True)
            assert admin_stream.headers["x-switchyard-backend"] == "secret-cut"


def test_public_metrics_name_no_keys() -> None:
    with serve(broken_upstream("fail")) as failing, gateway(failing=failing) as url:
        ask(url, USER, "failing")
        public = httpx.get(url + "/metrics").text
        assert 'key="plain"' not in public
        assert "switchyard_requests_total" in public
        as_admin = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
        assert 'key="plain"' in as_admin.text
