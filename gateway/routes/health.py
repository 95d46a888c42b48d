from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.engine_set import EngineSet
from gateway.errors import ServiceUnavailable
from gateway.routes._respond import JSONResponse

router = APIRouter()


@router.get("/health")
async def health() -> Response:
    """Liveness: the process answers. Engines still loading do not make it unhealthy."""
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> Response:
    """Readiness: every engine has started and reports healthy."""
    engines: EngineSet = request.app.state.engines
    states: dict[str, str] = {}
    for served in engines.served:
        state: str = served.state
        if state == "ready" and not (await served.engine.health()).ok:
            state = "unhealthy"
        states[served.engine.model_id] = state
    if all(state == "ready" for state in states.values()):
        return JSONResponse({"status": "ready", "models": states})
    waiting = ", ".join(f"{model} ({state})" for model, state in states.items() if state != "ready")
    error = ServiceUnavailable(f"Not ready: {waiting}.")
    return JSONResponse({**error.body(), "models": states}, status_code=error.status)
