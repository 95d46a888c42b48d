from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.call import Call
from gateway.openai import convert, render
from gateway.openai.schemas import ChatCompletionRequest
from gateway.routes._respond import bounds, cache_control, documented, parse, request_id, respond

router = APIRouter()


@router.post("/v1/chat/completions", openapi_extra=documented(ChatCompletionRequest))
async def create_chat_completion(request: Request) -> Response:
    body = await parse(request, ChatCompletionRequest)
    rid = request_id(request)
    generation = convert.chat_request(body, rid, bounds(request))
    renderer = render.ChatRenderer(rid, body.model, generation.n, bool(body.logprobs))
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    call = Call(
        rid, body.model, [generation], renderer, include_usage, cache_control=cache_control(request)
    )
    return await respond(request, call, stream=bool(body.stream))
