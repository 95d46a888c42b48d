from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gateway.engine_set import EngineSet

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    engines: EngineSet = request.app.state.engines
    created: int = request.app.state.started_at
    return {
        "object": "list",
        "data": [
            {
                "id": served.engine.model_id,
                "object": "model",
                "created": created,
                "owned_by": "switchyard",
                "root": served.engine.model_id,
                "parent": None,
            }
            for served in engines.served
        ]
        + [
            {
                "id": record.adapter.name,
                "object": "model",
                "created": created,
                "owned_by": "switchyard",
                "root": record.adapter.name,
                "parent": record.base,
            }
            for record in engines.adapters.records()
            if record.state == "ready"
        ],
    }
