from __future__ import annotations

import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.errors import ServiceUnavailable
from gateway.routes._respond import JSONResponse
from gateway.state import caller, shared

router = APIRouter()


@router.get("/health")
async def health() -> Response:
    """Liveness: the process answers. Engines still loading do not make it unhealthy."""
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> Response:
    """Readiness: every model has at least one routable backend (from the balancer's
    own view: start-up state, health probes and circuit breakers). The body says per
    model what is up, and per backend to admin keys (or with auth off): backend names,
    addresses and errors are configuration."""
    catalog = shared(request).catalog
    principal = caller(request)
    now = time.monotonic()
    states = {m.id: m.pool.state() for m in catalog.models}
    body: dict[str, object] = {"models": states}
    if principal is not None and principal.admin:
        body["backends"] = {
            m.id: [b.describe(now) for b in m.pool.backends] for m in catalog.models
        }
    if all(state == "ready" for state in states.values()):
        return JSONResponse({"status": "ready", **body})
    waiting = ", ".join(f"{model} ({state})" for model, state in states.items() if state != "ready")
    error = ServiceUnavailable(f"Not ready: {waiting}.")
    return JSONResponse({**error.body(), **body}, status_code=error.status)
