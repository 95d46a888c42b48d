"""What every generation route does after converting its body."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import anyio
import orjson
import pydantic
from fastapi import Request
from starlette.responses import Response
from starlette.types import Receive

from gateway import pipeline
from gateway.engine_set import EngineSet
from gateway.errors import ClientClosedRequest, invalid_body
from gateway.observe import Recorder
from gateway.openai.sse import EventStreamResponse, wait_for_disconnect
from gateway.pipeline import Call

T = TypeVar("T")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


M = TypeVar("M", bound=pydantic.BaseModel)


async def parse(request: Request, model: type[M]) -> M:
    """The body as `model`, parsed as JSON whatever the Content-Type says (curl -d
    sends form encoding by default)."""
    try:
        return model.model_validate_json(await request.body())
    except pydantic.ValidationError as exc:
        raise invalid_body(exc.errors()) from None


def cache_control(request: Request) -> str:
    return request.headers.get("cache-control", "")


def request_id(request: Request) -> str:
    rid: str = request.state.request_id
    return rid


async def respond(request: Request, call: Call, stream: bool) -> Response:
    state = request.app.state
    engines: EngineSet = state.engines
    recorder = Recorder.start(call, state.metrics, stream, state.settings.log_prompts)
    try:
        if stream:
            opened = pipeline.open_stream(engines, state.cache, call)
            events = await cancel_on_disconnect(request.receive, opened)
            return EventStreamResponse(recorder.watch_stream(events), headers=_headers(call))
        answer = pipeline.complete(engines, state.cache, call)
        body = await cancel_on_disconnect(request.receive, answer)
    except Exception as exc:
        recorder.failed(exc)
        raise
    recorder.finish(200)
    return JSONResponse(body, headers=_headers(call))


def _headers(call: Call) -> dict[str, str]:
    outcome = call.outcome
    headers: dict[str, str] = {"x-switchyard-cache": outcome.cache}
    if outcome.backend:
        headers["x-switchyard-backend"] = outcome.backend
    return headers


async def cancel_on_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (which aborts the
    generation inside the engine)."""
    done: list[T] = []
    failed: list[Exception] = []
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await wait_for_disconnect(receive)
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        try:
            done.append(await work)
        except Exception as exc:
            failed.append(exc)
        tg.cancel_scope.cancel()
    if failed:
        raise failed[0]
    if not done:
        raise ClientClosedRequest()
    return done[0]
