"""Token limits that cannot be outrun, through HTTP in front of the scripted engine
(slowed so requests overlap): a burst of parallel long requests from a key with a
small TPM is held to its budget within one request's worst case, in memory and in
a real redis-server (and the debt outlives a Redis restart); a client that leaves
mid-stream is charged what was generated for it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from engines.types import GenerationRequest, Message
from gateway.app import create_app
from gateway.auth import limits
from gateway.auth.keys import digest
from gateway.settings import Settings
from tests.gateway.conftest import scripted
from tests.redis_server import RedisServer
from tests.servers import serve, wait_until

SECRET = "sy-burst-key"
TPM = 1200
MAX_TOKENS = 100
LONG = " ".join(f"w{i}" for i in range(2 * MAX_TOKENS))  # always ends by length
CHAT = {
    "model": "scripted",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": MAX_TOKENS,
    "temperature": 0,
}
HEADERS = {"Authorization": f"Bearer {SECRET}"}


@contextlib.contextmanager
def gateway(
    rate_limit: dict[str, Any] | None = None, tpm: int = TPM
) -> Iterator[tuple[str, FastAPI]]:
    keys = [{"label": "burst", "key_sha256": digest(SECRET), "models": ["*"], "tpm": tpm}]
    settings = Settings(
        auth={"keys": keys, "rate_limit": rate_limit or {}}, cache={"backend": "none"}
    )
    engine = scripted(reply=LONG, token_delay_s=0.02)
    app = create_app(settings, engines=[engine])
    with serve(app) as url:
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=10)
        yield url, app


def worst_case() -> int:
    request = GenerationRequest("r", (Message("user", "hi"),), max_tokens=MAX_TOKENS, temperature=0)
    return limits.worst_case([request])


def post(url: str) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json=CHAT, headers=HEADERS, timeout=60)


def burst(url: str, size: int = 24) -> tuple[list[httpx.Response], float]:
    started = time.monotonic()
    with ThreadPoolExecutor(size) as pool:
        answers = list(pool.map(lambda _: post(url), range(size)))
    return answers, time.monotonic() - started


def assert_held(answers: list[httpx.Response], elapsed_s: float) -> None:
    """Tokens used by admitted requests: at most the bucket, its refill meanwhile and
    one request's worst case (without reservations every request here is admitted,
    24 times 100+ tokens against 1200)."""
    admitted = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert len(admitted) + len(refused) == len(answers), [a.text for a in answers]
    assert admitted
    assert refused
    assert all("tokens per minute" in a.json()["error"]["message"] for a in refused)
    used = sum(a.json()["usage"]["total_tokens"] for a in admitted)
    assert used <= TPM + worst_case() + TPM / 60 * elapsed_s, (len(admitted), used)


def test_a_burst_is_held_to_the_budget_in_memory() -> None:
    with gateway() as (url, _):
        assert_held(*burst(url))


def test_a_burst_is_held_to_the_budget_in_redis_and_its_debt_outlives_a_restart(
    tmp_path: Path,
) -> None:
    redis = RedisServer(tmp_path, persistent=True)
    redis.start()
    try:
        # Redis answering late must not admit a request unreserved (on_redis_error:
        # allow would, as configured): a generous timeout, and deny past it.
        shared = {"backend": "redis", "redis_url": redis.url, "timeout_s": 2.0}
        shared["on_redis_error"] = "deny"
        with gateway(shared) as (a, _), gateway(shared) as (b, _):
            answers, elapsed = burst(a, 12)
            more, more_elapsed = burst(b, 12)
            assert_held(answers + more, elapsed + more_elapsed)
            # The bucket's level survives Redis restarting (append-only file), and
            # the gateways reach it again at once (their pooled connections died).
            assert wait_until(lambda: post(a).status_code == 200, timeout=60)
            started = time.monotonic()
            used = [post(a).json()["usage"]["total_tokens"] for _ in range(2)]
            redis.stop()
            redis.start()
            after = post(b)
            assert after.status_code == 200, after.text
            full = TPM - worst_case()  # what a lost bucket would show after admission
            refill = TPM / 60 * (time.monotonic() - started) + 1
            assert int(after.headers["x-ratelimit-remaining-tokens"]) <= full - sum(used) + refill
    finally:
        redis.stop()


def test_a_client_that_leaves_mid_stream_is_charged_what_it_was_sent() -> None:
    tpm = 60  # a token a second: the refill hardly blurs the charge
    with gateway(tpm=tpm) as (url, app):
        body = {**CHAT, "stream": True}
        received = 0
        with httpx.stream(
            "POST", url + "/v1/chat/completions", json=body, headers=HEADERS, timeout=30
        ) as response:
            for line in response.iter_lines():
                received += line.startswith("data: {") and '"content":"' in line
                if received == 30:
                    break
        left = time.monotonic()
        bucket = app.state.shared.limiter._buckets[("burst", "tokens")]  # white-box: its level
        # The reservation (more than the bucket) is settled once the gateway notices.
        assert wait_until(lambda: bucket.refill(time.monotonic()) > 0, timeout=10), bucket
        refill = time.monotonic() - left + 1
        assert bucket.level <= tpm - received + refill, (bucket, received)
