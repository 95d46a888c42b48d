"""`/v1/responses`: create (through the chat pipeline), retrieve, delete, input items.

Stored responses belong to the API key that made them: any other key is answered
404, as for a response that does not exist. The store being unreachable fails only
what needs it: a `previous_response_id` or a read gets a 503; a new response is still
answered, with `store: false` when it could not be kept.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import pydantic
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from gateway.auth.keys import Principal
from gateway.call import Call
from gateway.errors import InvalidRequest, NotFound, ServiceUnavailable, invalid_body
from gateway.openai import convert
from gateway.openai.schemas import ChatCompletionRequest
from gateway.responses import items
from gateway.responses.render import ResponsesRenderer
from gateway.responses.schemas import ResponsesRequest
from gateway.responses.store import RecordTooLarge, ResponseStore, Stored, StoreUnavailable
from gateway.routes._respond import (
    JSONResponse,
    bounds,
    cache_control,
    documented,
    parse,
    request_id,
    respond,
)
from gateway.state import principal, shared

log = logging.getLogger("switchyard")
router = APIRouter()


@router.post("/v1/responses", openapi_extra=documented(ResponsesRequest))
async def create_response(request: Request) -> Response:
    body = await parse(request, ResponsesRequest)
    store = shared(request).responses
    who = principal(request)
    history: list[dict[str, Any]] = []
    if body.previous_response_id is not None:
        if store is None:
            raise InvalidRequest(
                "This gateway keeps no responses (responses.backend: none), so "
                "previous_response_id cannot be used; send the whole conversation as input.",
                param="previous_response_id",
            )
        previous = await _stored(
            store, body.previous_response_id, who, param="previous_response_id"
        )
        history = previous.history
    given = items.input_items(body)
    try:
        chat = ChatCompletionRequest.model_validate(items.chat_body(body, history, given))
    except pydantic.ValidationError as exc:
        raise invalid_body(exc.errors()) from None
    rid = request_id(request)
    generation = convert.chat_request(chat, rid, bounds(request))
    keep = None
    if body.store and store is not None:
        keep = _keeper(store, who.label, given, history)
    renderer = ResponsesRenderer(rid, body, keep)
    call = Call(
        rid,
        body.model,
        [generation],
        renderer,
        cache_control=cache_control(request),
        endpoint="responses",
    )
    return await respond(request, call, stream=bool(body.stream))


def _keeper(
    store: ResponseStore, owner: str, given: list[dict[str, Any]], history: list[dict[str, Any]]
) -> Any:
    async def keep(renderer: ResponsesRenderer) -> bool:
        record = Stored(owner, renderer.response(), given, [*history, *given, *renderer.output()])
        record.response["store"] = True
        try:
            await store.put(renderer.id, record)
        except (StoreUnavailable, RecordTooLarge) as exc:
            log.warning("response %s not stored: %s", renderer.id, exc)
            return False
        return True

    return keep


@router.get("/v1/responses/{response_id}")
async def retrieve_response(response_id: str, request: Request) -> Response:
    record = await _stored(_store(request), response_id, principal(request))
    return JSONResponse(record.response)


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> Response:
    store = _store(request)
    await _stored(store, response_id, principal(request))
    try:
        await store.delete(response_id)
    except StoreUnavailable:
        raise _unreachable() from None
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    request: Request,
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
    before: str | None = None,
) -> Response:
    record = await _stored(_store(request), response_id, principal(request))
    listed = record.input if order == "asc" else record.input[::-1]
    ids = [item["id"] for item in listed]
    for cursor, keep_after in ((after, True), (before, False)):
        if cursor is None:
            continue
        if cursor not in ids:
            where = "after" if keep_after else "before"
            raise InvalidRequest(f"No input item with id {cursor!r} in this response.", param=where)
        at = ids.index(cursor)
        listed, ids = (listed[at + 1 :], ids[at + 1 :]) if keep_after else (listed[:at], ids[:at])
    page = listed[:limit]
    return JSONResponse(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(listed) > limit,
        }
    )


def _store(request: Request) -> ResponseStore:
    store = shared(request).responses
    if store is None:
        raise NotFound("This gateway keeps no responses (responses.backend: none).")
    return store


async def _stored(
    store: ResponseStore, response_id: str, owner: Principal, param: str | None = None
) -> Stored:
    """The record, if it exists and belongs to the caller's key; else 404."""
    try:
        record = await store.get(response_id)
    except StoreUnavailable:
        raise _unreachable() from None
    if record is None or record.owner != owner.label:
        raise NotFound(f"Response with id '{response_id}' not found.", param=param)
    return record


def _unreachable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The response store is unreachable, so stored responses cannot be read or changed "
        "now; retry shortly, or send the whole conversation as input with store: false."
    )
