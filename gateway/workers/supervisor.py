"""The parent of `switchyard serve --workers N`: it binds the socket, makes a fresh run
directory, sets the environment the workers read, and runs uvicorn's multiprocess
supervisor, which starts the workers, restarts one that dies, and on SIGTERM or
SIGINT stops them all.

    run directory (a new temporary one per serve, removed at exit)
        metrics/        prometheus-client's multiprocess files (PROMETHEUS_MULTIPROC_DIR)
        in_flight/      the per-key in-flight table and the workers' column locks
        adapters.json   the adapter ledger (and adapters.lock)

The workers get their settings as JSON in SWITCHYARD_WORKER_SETTINGS (no worker
reads the YAML file or the SWITCHYARD_* variables again, so all agree) and the run
directory in SWITCHYARD_WORKER_RUN_DIR. On shutdown the parent closes its copy of the
socket first, so that once the workers closed theirs new connections are refused,
while each worker lets its open requests and streams finish for up to
`shutdown_grace_s`. A worker that exits is marked dead in the metrics files (its live
gauges leave the aggregate) whether it exited cleanly or not.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from socket import socket

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess
from uvicorn.supervisors.multiprocess import Process

from gateway.settings import Settings
from gateway.workers.plan import per_worker
from gateway.workers.worker import RUN_DIR, SETTINGS

log = logging.getLogger("switchyard")

APP = "gateway.workers.worker:create_worker_app"


def serve(settings: Settings) -> int:
    """Serve `settings` on `settings.workers` workers until told to stop; the exit
    status (1 if a worker could not start). `plan.refusals` must be empty."""
    mine, notes = per_worker(settings)
    for note in notes:
        log.info(note)
    run = Path(tempfile.mkdtemp(prefix="switchyard-workers-"))
    metrics = run / "metrics"
    metrics.mkdir()
    os.environ[SETTINGS] = mine.model_dump_json()
    os.environ[RUN_DIR] = str(run)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    config = uvicorn.Config(
        APP,
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=False,  # ours (switchyard.access) says more, as JSON
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    sock = config.bind_socket()
    supervisor = Supervisor(config, [sock], metrics)
    try:
        supervisor.run()
    finally:
        sock.close()
        shutil.rmtree(run, ignore_errors=True)
    return 1 if supervisor.failed else 0


class Supervisor(Multiprocess):
    """uvicorn's supervisor, and: worker exits marked in the metrics files, the
    parent's socket closed before the workers are told to stop, and whether a worker
    failed to start (`failed`)."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket], metrics: Path) -> None:
        super().__init__(config, sockets)
        self.metrics = metrics
        self.failed = False
        self._known: dict[int, Process] = {}

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        self._reap()

    def handle_signals(self) -> None:
        super().handle_signals()
        self._reap()

    def terminate_all(self) -> None:
        for sock in self.sockets:
            sock.close()
        super().terminate_all()

    def join_all(self) -> None:
        super().join_all()
        self._reap()

    def _reap(self) -> None:
        from prometheus_client import multiprocess

        for process in self.processes:
            if process.pid is not None:
                self._known.setdefault(process.pid, process)
        for pid, process in list(self._known.items()):
            code = process.exitcode
            if code is None:
                continue
            self.failed |= code == STARTUP_FAILURE
            multiprocess.mark_process_dead(pid, str(self.metrics))  # type: ignore[no-untyped-call]
            del self._known[pid]
