"""`POST /tokenize` and `POST /detokenize`, as vLLM's server has them: a prompt (or
messages, rendered with the model's chat template) as token ids, and back."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway import pooled
from gateway.openai.embeddings import DetokenizeRequest, TokenizeRequest, tokenize_body, wire
from gateway.routes._pooled import answer
from gateway.routes._respond import documented, parse
from gateway.state import shared

router = APIRouter()


@router.post("/tokenize", openapi_extra=documented(TokenizeRequest))
async def tokenize(request: Request) -> Response:
    body = await parse(request, TokenizeRequest)
    payload = tokenize_body(body, shared(request).settings.max_messages)
    return await answer(request, body.model, "tokenize", pooled.tokenize(payload))


@router.post("/detokenize", openapi_extra=documented(DetokenizeRequest))
async def detokenize(request: Request) -> Response:
    body = await parse(request, DetokenizeRequest)
    return await answer(request, body.model, "detokenize", pooled.detokenize(wire(body)))
