"""Graceful shutdown of `switchyard serve` (a real process): on SIGTERM it stops
accepting connections at once, while a stream in progress goes on to its end."""

from __future__ import annotations

import gc
import http.client
import json
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.app import GC_YOUNG, create_app
from tests.gateway.conftest import scripted, settings
from tests.servers import free_port, serve, wait_until

CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}
JSON = {"Content-Type": "application/json"}


def refused(url: str) -> bool:
    """Whether a new connection to the gateway is refused."""
    try:
        httpx.get(url + "/health", timeout=2)
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        pass  # accepted, then not answered: not refused
    return False


def assert_drains_after_sigterm(proc: subprocess.Popen[bytes], url: str, words: int) -> None:
    """SIGTERM `proc` once a stream of `words` words (scripted model "s") has begun:
    new connections are refused while most of its words are still to come, and the
    stream goes on to its end."""
    body = {
        "model": "s",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "temperature": 0,
    }
    text: list[str] = []
    refused_after: int | None = None  # lines of the stream read when it was refused
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        for line in lines:
            if '"content":"w' in line:
                break
        proc.send_signal(signal.SIGTERM)
        # Read the stream as it comes (a word per 0.2 s, so at most one waits
        # unread) and, after each line, try a new connection.
        for line in lines:
            if line:
                text.append(line)
            if refused_after is None and refused(url):
                refused_after = len(text)
    assert text[-1] == "data: [DONE]"
    assert any('"finish_reason":"stop"' in line for line in text)
    assert refused_after is not None, "new connections were accepted to the stream's end"
    # Refused while the stream was still draining: most of its words came after.
    drained = [line for line in text[refused_after:] if '"content":" w' in line]
    assert len(drained) >= words // 2, (refused_after, text)


def test_sigterm_lets_open_streams_finish(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gateway.yaml"
    words = 30  # one every 0.2 s: the stream runs for about 6 s
    engine = {"reply": " ".join(f"w{i}" for i in range(words)), "token_delay_s": 0.2}
    config.write_text(
        yaml.safe_dump(
            {
                "port": port,
                "shutdown_grace_s": 20,
                "auth": {"enabled": False},
                "engines": [{"name": "s", "kind": "scripted", "model_id": "s", "options": engine}],
            }
        )
    )
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:

        def ready() -> bool:
            try:
                return httpx.get(url + "/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(ready, timeout=30, interval=0.2)
        assert_drains_after_sigterm(proc, url, words)
        assert refused(url)
        # uvicorn re-raises the signal it caught once shut down, so the exit status
        # says "terminated by SIGTERM", as for any well-behaved server.
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)
        assert proc.stderr is not None
        assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_start_up_freezes_the_heap_and_tunes_the_young_generation() -> None:
    """Once its engines started, the gateway collects the young generation every
    `GC_YOUNG` allocations (see `gateway.app.freeze_heap`), and what start-up made is out
    of the collector's sight."""
    before = gc.get_threshold()
    gc.set_threshold(700, *before[1:])
    try:
        with serve(create_app(settings(), engines=[scripted()])):
            assert wait_until(lambda: gc.get_threshold()[0] == GC_YOUNG, timeout=10)
            assert gc.get_freeze_count() > 0
    finally:
        gc.set_threshold(*before)


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_leaves_no_cyclic_garbage(stream: bool) -> None:
    """What a request allocates is freed by reference counting, nothing left for the
    cycle collector, whose every collection walks what the requests in flight hold
    (`gateway.app.freeze_heap`). A cancelled watcher task, or a recursive closure, each
    left dozens of objects per request."""
    body = json.dumps({**CHAT, "stream": stream})
    with serve(create_app(settings(), engines=[scripted()])) as url:
        conn = http.client.HTTPConnection(url.removeprefix("http://"))

        def ask(times: int) -> None:
            for _ in range(times):
                conn.request("POST", "/v1/chat/completions", body, JSON)
                answer = conn.getresponse()
                answer.read()
                assert answer.status == 200

        ask(20)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            ask(100)
            gc.collect()
            left = Counter(type(o).__name__ for o in gc.garbage)
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        conn.close()
    assert left.total() < 100, left  # fewer than one object a request
