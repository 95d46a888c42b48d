"""`POST /v1/embeddings`, for models that serve embeddings (vLLM's pooling runner, or
a remote server that embeds)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway import pooled
from gateway.openai.embeddings import EmbeddingRequest, embedding_body
from gateway.routes._pooled import answer
from gateway.routes._respond import documented, parse
from gateway.state import shared

router = APIRouter()


@router.post("/v1/embeddings", openapi_extra=documented(EmbeddingRequest))
async def create_embeddings(request: Request) -> Response:
    body = await parse(request, EmbeddingRequest)
    settings = shared(request).settings
    wire = embedding_body(body, settings.max_embedding_inputs, settings.max_messages)
    return await answer(request, body.model, "embeddings", pooled.embed(wire), task="embed")
