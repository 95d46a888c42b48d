"""An upstream that answers 200 and then not OpenAI's stream, or closes it before the
finish: the backend failed. Before the client saw anything the request goes to
another backend; it never ends as a stream without a finish and without an error.

The broken upstream is a test double (a few lines of Starlette); the good one is a
gateway serving the scripted engine, both over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.app import create_app
from gateway.settings import BalancerSettings, Settings
from tests.engines.test_openai_remote import upstream
from tests.servers import serve, wait_until
from tests.settings import NO_AUTH

ROLE = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "up-model",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]}  # fmt: skip


def broken_upstream(kind: str) -> Starlette:
    """`garbage`: 200 with bytes that are no SSE; `cut`: one event, then the end;
    `reset`: the headers, then after a moment the connection drops (a killed server);
    `fail`: after a moment, a 500."""

    async def answer(request: Request) -> Response:
        if kind == "garbage":
            return PlainTextResponse("\x00<html>not json")
        if kind == "reset":
            return StreamingResponse(_dropped(), media_type="text/event-stream")
        if kind == "fail":
            await asyncio.sleep(0.3)
            return PlainTextResponse("injected fault", status_code=500)
        frame = b"data: " + orjson.dumps(ROLE) + b"\n\n"
        return StreamingResponse(iter([frame]), media_type="text/event-stream")

    async def health(request: Request) -> Response:
        return Response()

    routes = [Route("/v1/chat/completions", answer, methods=["POST"]), Route("/health", health)]
    return Starlette(routes=routes)


async def _dropped() -> AsyncIterator[bytes]:
    await asyncio.sleep(0.3)
    raise ConnectionResetError("killed")  # the server drops the connection mid-body
    yield b""


@contextlib.contextmanager
def gateway(broken: str, good: str) -> Iterator[str]:
    # The good upstream is a gateway, which relays no token ids (`token_ids: false`).
    engines = [
        {"name": name, "kind": "openai_remote", "model_id": "m",
         "options": {"url": url, "upstream_model": "up-model", "token_ids": False}}
        for name, url in (("broken", broken), ("good", good))
    ]  # fmt: skip
    balancer = BalancerSettings(policy="round_robin")
    app = create_app(Settings(engines=engines, auth=NO_AUTH, balancer=balancer))
    with serve(app) as url:
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=10)
        yield url


def finishes(events: list[dict[str, Any]]) -> int:
    return sum(1 for e in events for c in e.get("choices", []) if c.get("finish_reason"))


@pytest.mark.parametrize("kind", ["garbage", "cut"])
def test_a_cut_answer_is_retried_before_output_and_an_error_after(kind: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with serve(broken_upstream(kind)) as broken, upstream() as good, gateway(broken, good) as url:
        outcomes = set()
        for stream in (True, True, False, False):  # round robin: each kind on each backend
            r = httpx.post(url + "/v1/chat/completions", json={**body, "stream": stream})
            assert r.status_code == 200, r.text
            backend = r.headers["x-switchyard-backend"]
            if not stream:  # retried: nothing had reached the client
                assert backend == "good"
                assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")
                continue
            lines = r.text.splitlines()
            events = [orjson.loads(x[6:]) for x in lines if x.startswith("data: {")]
            errors = [e for e in events if "error" in e]
            if backend == "good":
                assert (finishes(events), errors) == (1, [])
            else:  # "Hel" had reached the client: the answer ends with an error event
                assert kind == "cut"
                assert finishes(events) == 0
                assert len(errors) == 1
                assert "cut" in errors[0]["error"]["message"]
            outcomes.add(backend)
        assert outcomes == ({"good", "broken"} if kind == "cut" else {"good"})


@pytest.mark.parametrize("kind", ["reset", "fail"])
def test_a_replica_dying_under_load_loses_none_of_its_requests(kind: str) -> None:
    """Half the requests in flight fail at once when one of two replicas dies or
    fails: more than the retry budget's three, and every one is retried (the budget
    is for failures that may be load, a timeout or a 429, not a backend's own)."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with (
        serve(broken_upstream(kind)) as broken,
        upstream(token_delay_s=0.2) as good,  # the retries stay in flight together
        gateway(broken, good) as url,
    ):

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                send = [client.post("/v1/chat/completions", json=body) for _ in range(10)]
                return await asyncio.gather(*send)

        answers = asyncio.run(burst())
    assert [r.status_code for r in answers] == [200] * 10, [r.text for r in answers]
    assert {r.headers["x-switchyard-backend"] for r in answers} == {"good"}
