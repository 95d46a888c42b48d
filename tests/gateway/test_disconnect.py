"""A client that leaves stops the generation behind it, streaming or not."""

from __future__ import annotations

import socket

import httpx
import pytest

from engines.scripted import ScriptedEngine
from tests.gateway.conftest import scripted
from tests.servers import wait_until

BODY = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def engine() -> ScriptedEngine:
    return scripted(reply="word " * 1000, token_delay_s=0.02)


def test_stream_disconnect_aborts_generation(base_url: str, engine: ScriptedEngine) -> None:
    with httpx.stream(
        "POST", base_url + "/v1/chat/completions", json={**BODY, "stream": True}
    ) as r:
        lines = r.iter_lines()
        seen = [line for _, line in zip(range(6), lines, strict=False)]
        assert any("word" in line for line in seen)
        assert engine.running == 1
    # Leaving the block closed the connection mid-stream.
    assert wait_until(lambda: engine.running == 0, timeout=5)
    assert engine.aborted == 1


def test_non_stream_disconnect_aborts_generation(base_url: str, engine: ScriptedEngine) -> None:
    host, port = base_url.removeprefix("http://").split(":")
    payload = httpx.Request("POST", base_url + "/v1/chat/completions", json=BODY)
    raw = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload.read())}\r\n\r\n"
    ).encode() + payload.read()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(raw)
        assert wait_until(lambda: engine.running == 1, timeout=5)
    assert wait_until(lambda: engine.running == 0, timeout=5)
    assert engine.aborted == 1
