"""What every generation route does after converting its body."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
import pydantic
from fastapi import Request
from starlette.responses import Response
from starlette.types import Receive

from engines.types import GenerationRequest
from gateway import pipeline
from gateway.auth import limits
from gateway.auth.keys import Principal
from gateway.auth.limits import InFlight, Limiter
from gateway.call import Call, Outcome
from gateway.errors import (
    ClientClosedRequest,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    RateLimited,
    ServiceUnavailable,
    as_gateway_error,
    for_caller,
    internal_error,
    invalid_body,
)
from gateway.metrics import Metrics
from gateway.observe import Recorder, WatchedStream
from gateway.openai.convert import Bounds
from gateway.openai.sse import EventStreamResponse, Hangup, framed
from gateway.settings import Settings
from gateway.state import principal as principal_of
from gateway.state import shared

log = logging.getLogger("switchyard")

T = TypeVar("T")


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


M = TypeVar("M", bound=pydantic.BaseModel)


def documented(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """`openapi_extra` declaring `model` as the JSON body of a route that parses its
    body itself (with `parse`), so /openapi.json describes it (clients, fuzzers). The
    schema is inline; `components` hoists it and the models it uses."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    body = {"required": True, "content": {"application/json": {"schema": schema}}}
    return {"requestBody": body}


def components(document: dict[str, Any]) -> dict[str, Any]:
    """`document` (an OpenAPI document) with the inline body schemas of `documented`
    routes moved to its components, each body a reference to its model's."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for operation in (op for path in document.get("paths", {}).values() for op in path.values()):
        body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
        schema = body.get("schema", {})
        if "title" not in schema or "$ref" in schema:
            continue
        schemas.update(schema.pop("$defs", {}))
        schemas[schema["title"]] = schema
        body["schema"] = {"$ref": f"#/components/schemas/{schema['title']}"}
    return document


async def parse(request: Request, model: type[M]) -> M:
    """The body as `model`, parsed as JSON whatever the Content-Type says (curl -d
    sends form encoding by default)."""
    body = await request.body()
    try:
        parsed = model.model_validate_json(body)
    except pydantic.ValidationError as exc:
        raise invalid_body(exc.errors()) from None
    if _LONG_NUMBER.search(body) and _beyond_64_bits(body):
        raise InvalidRequest(
            "The body holds an integer beyond 64 bits; numbers must lie within "
            f"{INT_RANGE[0]} and {INT_RANGE[1]} (what JSON tools and engines carry)."
        )
    return parsed


INT_RANGE = (-(2**63), 2**64 - 1)  # what orjson writes, and so every engine's wire
_LONG_NUMBER = re.compile(rb"\d{19}")  # the cheap look; a hit may be inside a string


def _beyond_64_bits(body: bytes) -> bool:
    beyond = False

    def check(text: str) -> int:
        nonlocal beyond
        value = int(text)
        beyond |= not INT_RANGE[0] <= value <= INT_RANGE[1]
        return value

    json.loads(body, parse_int=check)
    return beyond


def bounds(request: Request) -> Bounds:
    settings = shared(request).settings
    return Bounds(settings.max_n, settings.max_tools, settings.max_schema_bytes)


def cache_control(request: Request) -> str:
    return request.headers.get("cache-control", "")


def request_id(request: Request) -> str:
    rid: str = request.state.request_id
    return rid


async def respond(request: Request, call: Call, stream: bool) -> Response:
    state = shared(request)
    principal = principal_of(request)
    if not principal.may_use(call.model):
        raise ModelNotFound(call.model)  # the same answer as for a model that is not here
    _bounded(call, state.settings)
    call = dataclasses.replace(
        call,
        requests=_capped(call, principal, state.settings.default_max_tokens),
        scope=principal.label,
        show_backends=principal.admin,
    )
    in_flight = state.in_flight
    enter(in_flight, principal)
    reserving = principal.tpm is not None and state.settings.auth.rate_limit.reserve
    reserve = limits.worst_case(call.requests) if reserving else 0
    try:
        rate_headers, reserved = await admit(state.limiter, principal, state.metrics, reserve)
    except Exception:
        in_flight.leave(principal)
        raise
    recorder = Recorder.start(call, state.metrics, stream, state.settings.log_prompts)
    call, outcome = recorder.call, recorder.outcome
    recorder.key = principal.label
    recorder.leave = functools.partial(in_flight.leave, principal)
    if principal.tpm is not None and state.limiter is not None:
        recorder.charge = functools.partial(state.limiter.charge, principal)
        recorder.reserved = reserved
    try:
        if stream:
            opened = pipeline.stream(state.catalog, state.cache, call, outcome)
            chunks = await cancel_on_disconnect(request.receive, opened)
            events = framed(call.renderer, chunks, call.include_usage, _mid_stream(call, outcome))
            return EventStreamResponse(
                WatchedStream(recorder, events),
                headers={**_headers(call, outcome), **rate_headers},
                send_timeout_s=state.settings.stream_send_timeout_s,
            )
        answer = pipeline.complete(state.catalog, state.cache, call, outcome)
        body = await cancel_on_disconnect(request.receive, answer)
    except Exception as exc:
        recorder.failed(exc)
        await recorder.settle()
        raise
    recorder.finish(200)
    await recorder.settle()
    return JSONResponse(body, headers={**_headers(call, outcome), **rate_headers})


def _mid_stream(call: Call, outcome: Outcome) -> Callable[[Exception], GatewayError]:
    """How a stream's failure after its first event is told in its error event: as
    the caller may read it (`for_caller`), a bug as a bare internal error."""

    def told(exc: Exception) -> GatewayError:
        outcome.failed_mid_stream = True
        error = as_gateway_error(exc)
        if error is None:
            log.error("stream %s failed", call.request_id, exc_info=exc)
            return internal_error(call.request_id)
        return for_caller(error, call.request_id, call.show_backends)

    return told


def enter(in_flight: InFlight, principal: Principal) -> None:
    """Count one more request of the key in flight, or 429 if it has all it may."""
    if not in_flight.enter(principal):
        raise RateLimited(
            f"This API key has {principal.max_concurrent} requests in flight, as many as it "
            "may; retry once one has finished (streams count until they are read to the end).",
            {"retry-after": "1"},
        )


async def admit(
    limiter: Limiter | None, principal: Principal, metrics: Metrics | None, reserve: int = 0
) -> tuple[dict[str, str], int]:
    """Take the request and `reserve` tokens from its key's limits: its
    `x-ratelimit-*` headers and the tokens reserved, or 429."""
    if limiter is None or not principal.limited:
        return {}, 0
    verdict = await limiter.admit(principal, reserve)
    if verdict.unavailable and not verdict.allowed:
        raise ServiceUnavailable("The rate limiter's store is unreachable; retry shortly.")
    headers = limits.headers(principal, verdict)
    if verdict.allowed:
        return headers, verdict.reserved
    if metrics is not None:
        metrics.rate_limited.labels(principal.label, verdict.limit).inc()
    per = f"{principal.rpm} requests" if verdict.limit == "requests" else f"{principal.tpm} tokens"
    raise RateLimited(
        f"Rate limit reached for this API key: {per} per minute. "
        f"Retry after {headers.get('retry-after', '1')} s.",
        headers,
    )


def _bounded(call: Call, settings: Settings) -> None:
    """At most `max_messages` messages in a conversation, `max_prompts` prompts in a
    batch, and `max_generations` generations (n for each prompt) in all."""
    prompt = call.requests[0].prompt
    if call.requests[0].is_chat and len(prompt) > settings.max_messages:
        raise InvalidRequest(
            f"{len(prompt)} messages is more than this gateway takes (max_messages: "
            f"{settings.max_messages}).",
            param="messages",
        )
    if len(call.requests) > settings.max_prompts:
        raise InvalidRequest(
            f"{len(call.requests)} prompts is more than this gateway takes in one request "
            f"(max_prompts: {settings.max_prompts}); send them in smaller batches.",
            param="prompt",
        )
    generations = sum(r.n for r in call.requests)
    if generations > settings.max_generations:
        raise InvalidRequest(
            f"n={call.requests[0].n} for {len(call.requests)} prompts is {generations} "
            f"generations, more than this gateway starts for one request (max_generations: "
            f"{settings.max_generations}); lower n or send fewer prompts at once.",
            param="n",
        )


def _capped(call: Call, principal: Principal, default: int | None) -> list[GenerationRequest]:
    """max_tokens bounded: the key's `max_tokens` is a cap that a request may not
    exceed; a request that sets none gets the key's, else the gateway's
    `default_max_tokens`, which the engine fits to the context the prompt leaves."""
    cap = principal.max_tokens
    if cap is not None:
        for r in call.requests:
            if r.max_tokens is not None and r.max_tokens > cap:
                raise InvalidRequest(
                    f"max_tokens is {r.max_tokens}, above this API key's cap of {cap}.",
                    param="max_tokens",
                )
    fill = cap if cap is not None else default
    if fill is None:
        return call.requests
    return [
        r
        if r.max_tokens is not None
        else dataclasses.replace(r, max_tokens=fill, fit_max_tokens=True)
        for r in call.requests
    ]


def _headers(call: Call, outcome: Outcome) -> dict[str, str]:
    """The cache's verdict; which backend answered, for admin keys only."""
    headers: dict[str, str] = {"x-switchyard-cache": outcome.cache}
    if outcome.backend and call.show_backends:
        headers["x-switchyard-backend"] = outcome.backend
    return headers


async def cancel_on_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (which aborts the
    generation inside the engine), as `ClientClosedRequest`."""
    with Hangup(receive):
        return await work
    raise ClientClosedRequest()
