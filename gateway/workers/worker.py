"""One worker: the app uvicorn's supervisor builds in each worker process
(`create_worker_app`, an app factory), from what the parent left in the environment.

It is the app `create_app` builds, with what the workers share in place of what one
process keeps to itself: the per-key in-flight counts (in_flight.py), and the
adapter ledger in the run directory (or Redis's, with `adapter_registry: {backend:
redis}`), which the registry follows each probe interval (gateway/adapter_ledger.py).
Its lifespan also copies this worker's live metrics into the shared files each
second (gateway/metrics.py), and on the way out frees its in-flight column and marks
its metrics dead (their live gauges drop out of the aggregate; its counters stay in
it); create_app's lifespan leaves the ledger.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import FastAPI

from gateway.adapter_ledger import open_ledger
from gateway.app import create_app
from gateway.metrics import Metrics
from gateway.settings import Settings
from gateway.state import Shared
from gateway.workers.in_flight import SharedInFlight

log = logging.getLogger("switchyard")

SETTINGS = "SWITCHYARD_WORKER_SETTINGS"  # the worker's settings, as JSON
RUN_DIR = "SWITCHYARD_WORKER_RUN_DIR"  # shared by the workers of one serve
MIRROR_S = 1.0  # how often a worker copies its live metrics for the others' scrapes


def create_worker_app() -> FastAPI:
    """The app of one worker (called by uvicorn in the worker process)."""
    from gateway.cli import configure_logging

    settings = Settings.model_validate_json(os.environ[SETTINGS])
    run = Path(os.environ[RUN_DIR])
    configure_logging(settings)
    in_flight = SharedInFlight(run / "in_flight")
    app = create_app(settings, in_flight=in_flight, ledger=open_ledger(settings, run))
    shared: Shared = app.state.shared
    own = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            async with own(app), anyio.create_task_group() as tg:
                if shared.metrics is not None:
                    tg.start_soon(_mirror, shared.metrics)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:
            in_flight.close()
            _mark_dead(shared.metrics)

    app.router.lifespan_context = lifespan
    log.info("worker %d: in-flight column %d", os.getpid(), in_flight.column)
    return app


async def _mirror(metrics: Metrics) -> None:
    assert metrics.mirror is not None
    while True:
        metrics.mirror.refresh()
        await anyio.sleep(MIRROR_S)


def _mark_dead(metrics: Metrics | None) -> None:
    from prometheus_client import multiprocess

    from gateway.metrics import shared_values

    directory = shared_values()
    if metrics is not None and directory is not None:
        multiprocess.mark_process_dead(os.getpid(), str(directory))  # type: ignore[no-untyped-call]
