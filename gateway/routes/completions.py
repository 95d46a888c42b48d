from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.call import Call
from gateway.openai import convert, render
from gateway.openai.schemas import CompletionRequest
from gateway.routes._respond import bounds, cache_control, documented, parse, request_id, respond

router = APIRouter()


@router.post("/v1/completions", openapi_extra=documented(CompletionRequest))
async def create_completion(request: Request) -> Response:
    body = await parse(request, CompletionRequest)
    rid = request_id(request)
    generations = convert.completion_requests(body, rid, bounds(request))
    n = generations[0].n * len(generations)
    renderer = render.CompletionRenderer(rid, body.model, n, body.logprobs is not None)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    call = Call(
        rid, body.model, generations, renderer, include_usage, cache_control=cache_control(request)
    )
    return await respond(request, call, stream=bool(body.stream))
