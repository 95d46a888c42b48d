"""Bounds on what one request and one key can take, through HTTP in front of the
scripted engine: prompts per batch and generations per request (400 naming the
bound), requests in flight per key (429), and clients that never read their stream
(cut after `stream_send_timeout_s`, their places released while other keys are
served). Cache entries over `max_entry_bytes` are not stored."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from engines.scripted import ScriptedEngine
from gateway.app import create_app
from gateway.auth.keys import digest
from gateway.settings import Settings
from tests.gateway.conftest import scripted
from tests.servers import serve, wait_until

SLOW, OTHER = "sy-slow-reader", "sy-other"
KEYS = [
    {"label": "slow", "key_sha256": digest(SLOW), "models": ["*"], "max_concurrent": 2},
    {"label": "other", "key_sha256": digest(OTHER), "models": ["*"]},
]
WORD = "x" * 20_000
CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}
TOKENIZE = {"model": "scripted", "prompt": "hi"}


def big_replies() -> ScriptedEngine:
    return scripted(reply=" ".join([WORD] * 1000))  # 20 MB: more than any socket holds


@contextlib.contextmanager
def gateway(engine: ScriptedEngine | None = None, **settings: Any) -> Iterator[tuple[str, FastAPI]]:
    app = create_app(Settings(auth={"keys": KEYS}, **settings), engines=[engine or big_replies()])
    with serve(app) as url:
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=10)
        yield url, app


def post(
    url: str, secret: str, body: dict[str, Any], path: str = "/v1/chat/completions"
) -> httpx.Response:
    return httpx.post(
        url + path, json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=60
    )


def test_batches_and_generations_are_bounded() -> None:
    with gateway(max_prompts=4, max_generations=6, cache={"backend": "none"}) as (url, _):
        body = {"model": "scripted", "max_tokens": 1}
        refused = post(url, OTHER, {**body, "prompt": ["a"] * 5}, "/v1/completions")
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "prompt"
        assert "max_prompts: 4" in refused.json()["error"]["message"]
        refused = post(url, OTHER, {**body, "prompt": ["a"] * 4, "n": 2}, "/v1/completions")
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "n"
        assert "max_generations: 6" in refused.json()["error"]["message"]
        ok = post(url, OTHER, {**body, "prompt": ["a"] * 3, "n": 2}, "/v1/completions")
        assert ok.status_code == 200, ok.text
        assert len(ok.json()["choices"]) == 6
        long_ids = post(url, OTHER, {**body, "prompt": list(range(2000))}, "/v1/completions")
        assert long_ids.status_code == 200, long_ids.text  # token ids are not messages


def never_read(url: str, secret: str) -> socket.socket:
    """A client that sends a streaming request and then reads nothing at all."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({**CHAT, "max_tokens": 1000, "stream": True}).encode()
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {secret}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def test_readers_that_never_read_are_cut_and_release_their_places(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = big_replies()
    # The limit leaves the checks below time to run while both readers are stuck: the
    # gateway, in this process, is busy with their 20 MB answers until they are cut.
    settings: dict[str, Any] = {"stream_send_timeout_s": 3.0, "cache": {"backend": "none"}}
    with caplog.at_level(logging.WARNING, "switchyard"), gateway(engine, **settings) as (url, app):
        stuck = [never_read(url, SLOW) for _ in range(2)]
        try:
            assert wait_until(lambda: app.state.shared.in_flight.counts["slow"] == 2, timeout=10)
            refused = post(url, SLOW, {**CHAT, "max_tokens": 1})
            assert refused.status_code == 429, refused.text
            assert "2 requests in flight" in refused.json()["error"]["message"]
            assert post(url, SLOW, TOKENIZE, "/tokenize").status_code == 429  # every route
            assert post(url, OTHER, {**CHAT, "max_tokens": 1}).status_code == 200
            assert wait_until(lambda: not app.state.shared.in_flight.counts["slow"], timeout=30)
            # Cut, not served to the end: both generations were aborted mid-answer, by
            # the send timeout (the sockets are still open).
            assert wait_until(lambda: engine.aborted == 2, timeout=10), engine.aborted
            cuts = [m for m in caplog.messages if "read nothing for 3s; cut" in m]
            assert len(cuts) == 2, caplog.messages
            assert post(url, SLOW, {**CHAT, "max_tokens": 1}).status_code == 200
            assert post(url, SLOW, TOKENIZE, "/tokenize").status_code == 200
            assert not app.state.shared.in_flight.counts["slow"]
            assert engine.aborted == 2  # the short answers ran to their end
        finally:
            for sock in stuck:
                sock.close()


def test_an_answer_over_max_entry_bytes_is_not_cached() -> None:
    cache = {"max_entry_bytes": 100_000}
    with gateway(cache=cache) as (url, app):
        body = {**CHAT, "max_tokens": 10, "temperature": 0}  # 200 KB
        for _ in range(2):
            assert post(url, OTHER, body).headers["x-switchyard-cache"] == "miss"
        assert app.state.shared.cache.oversized == 2
        small = {**CHAT, "max_tokens": 2, "temperature": 0}  # 40 KB
        assert post(url, OTHER, small).headers["x-switchyard-cache"] == "miss"
        assert post(url, OTHER, small).headers["x-switchyard-cache"] == "hit"


def test_an_unbounded_request_gets_the_default_max_tokens_fitted_to_the_context() -> None:
    """`default_max_tokens` bounds an answer the client did not bound, and the engine
    lowers it where the prompt leaves less room (a client's own max_tokens past the
    context stays its 400); a key's `max_tokens` is the default before the gateway's."""
    capped = "sy-capped"
    keys = [
        *KEYS,
        {"label": "capped", "key_sha256": digest(capped), "models": ["*"], "max_tokens": 2},
    ]
    settings = Settings(auth={"keys": keys}, default_max_tokens=5, cache={"backend": "none"})
    app = create_app(settings, engines=[scripted(reply=" ".join(["w"] * 50), max_model_len=20)])
    with serve(app) as url:
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=10)
        answer = post(url, OTHER, CHAT).json()
        assert answer["usage"]["completion_tokens"] == 5
        assert answer["choices"][0]["finish_reason"] == "length"
        long = {**CHAT, "messages": [{"role": "user", "content": "p " * 14}]}
        answer = post(url, OTHER, long).json()
        room = 20 - answer["usage"]["prompt_tokens"]
        assert 0 < room < 5
        assert answer["usage"]["completion_tokens"] == room
        refused = post(url, OTHER, {**long, "max_tokens": 5})
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "context_length_exceeded"
        assert post(url, capped, CHAT).json()["usage"]["completion_tokens"] == 2
