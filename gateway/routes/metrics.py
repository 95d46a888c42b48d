from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from gateway.errors import NotFound

router = APIRouter()


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format (see gateway/metrics.py for what is measured)."""
    collected = request.app.state.metrics
    if collected is None:
        raise NotFound("Metrics are off: set `metrics: true` to serve /metrics.")
    return Response(generate_latest(collected.registry), media_type=CONTENT_TYPE_LATEST)
