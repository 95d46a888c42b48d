"""`GET /v1/models`: what can be served right now. A model whose backends are all
down (or still loading) is left out rather than failing the listing; an adapter is
listed while some healthy backend of its base holds it. A key sees only the models
it may use."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from gateway.adapters import Artifact
from gateway.auth.keys import Principal
from gateway.engine_set import EngineSet

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    engines: EngineSet = request.app.state.engines
    principal: Principal = request.state.principal
    created: int = request.app.state.started_at
    now = time.monotonic()
    servable = {m.id for m in engines.models if m.pool.state() == "ready"}
    models = [
        _model(m.id, None, created, m.base.artifact) for m in engines.models if m.id in servable
    ]
    for record in engines.adapters.records():
        routable = {b.name for b in record.pool.backends if b.routable(now)}
        if record.state == "ready" and record.base in servable and record.placed & routable:
            models.append(_model(record.adapter.name, record.base, created))
    visible = [m for m in models if principal.may_use(m["id"])]
    return {"object": "list", "data": visible}


def _model(
    model_id: str, parent: str | None, created: int, artifact: Artifact | None = None
) -> dict[str, Any]:
    model = {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": "switchyard",
        "root": model_id,
        "parent": parent,
    }
    if artifact:
        model["artifact"] = artifact.describe()
    return model
