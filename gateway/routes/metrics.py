from __future__ import annotations

import os
from collections.abc import Iterator

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from starlette.responses import Response

from gateway.errors import NotFound
from gateway.state import caller, shared

router = APIRouter()


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format (see gateway/metrics.py for what is measured). Series
    labelled by API key only for admin keys: a public scrape, or another key's, does
    not learn which keys exist and how they are used. With workers, an admin's answer
    says which worker gave it (`x-switchyard-worker`: its pid), whatever it says is
    of them all."""
    collected = shared(request).metrics
    if collected is None:
        raise NotFound("Metrics are off: set `metrics: true` to serve /metrics.")
    principal = caller(request)
    admin = principal is not None and principal.admin
    registry = collected.registry if admin else _WithoutKeys(collected.registry)
    headers = {}
    if admin and collected.mirror is not None:  # workers: the one that answered
        headers["x-switchyard-worker"] = str(os.getpid())
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST, headers=headers)


class _WithoutKeys:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            if not any("key" in sample.labels for sample in metric.samples):
                yield metric
