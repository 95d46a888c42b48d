"""A client that leaves stops the generation behind it, streaming or not."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncGenerator

import httpx
import pytest

from engines.scripted import ScriptedEngine
from gateway.errors import ClientClosedRequest
from gateway.observe import DISCONNECTED, WatchedStream
from gateway.routes._respond import cancel_on_disconnect
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


class _Recorded:
    """A test double of the Recorder: what `WatchedStream` tells it."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.settled = 0

    def finish(self, status: int) -> None:
        self.statuses.append(status)

    async def settle(self) -> None:
        self.settled += 1


async def test_a_stream_closed_before_its_first_event_still_finishes() -> None:
    """A client gone before the response started: the stream is closed unstarted. Its
    call is finished and settled all the same (the key's place and reservation given
    back), and the generation behind it is closed; once, whatever comes after."""
    closed: list[bool] = []

    async def events() -> AsyncGenerator[bytes, None]:
        try:
            yield b"data: {}\n\n"
        finally:
            closed.append(True)

    recorded = _Recorded()
    source = events()
    await anext(source)  # the pipeline's stream is under way (its first chunk came)
    watched = WatchedStream(recorded, source)  # type: ignore[arg-type]
    await watched.aclose()
    await watched.aclose()
    assert recorded.statuses == [DISCONNECTED]
    assert recorded.settled == 1
    assert closed == [True]


async def test_a_cancellation_from_outside_is_not_a_disconnect() -> None:
    """`cancel_on_disconnect` tells its own cancellation (the client left: 499) from
    one that comes from outside (a server shutting down), which goes on through."""
    disconnected = asyncio.Event()

    async def receive() -> dict[str, str]:
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def forever() -> None:
        await asyncio.sleep(3600)

    outside = asyncio.create_task(cancel_on_disconnect(receive, forever()))
    await asyncio.sleep(0.01)
    outside.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outside

    left = asyncio.create_task(cancel_on_disconnect(receive, forever()))
    await asyncio.sleep(0.01)
    disconnected.set()
    with pytest.raises(ClientClosedRequest):
        await left
    assert left.cancelling() == 0
