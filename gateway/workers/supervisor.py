"""The parent of `switchyard serve --workers N`: it binds the socket, makes a fresh run
directory, sets the environment the workers read, and runs uvicorn's multiprocess
supervisor, which starts the workers, restarts one that dies, and on SIGTERM or
SIGINT stops them all.

    run directory (a new temporary one per serve, removed at exit)
        metrics/        prometheus-client's multiprocess files (PROMETHEUS_MULTIPROC_DIR)
        in_flight/      the per-key in-flight table and the workers' column locks
        adapters.json   the adapter ledger (and adapters.lock)

Each worker listens on a socket of its own, bound to the port with SO_REUSEPORT, and
the kernel spreads new connections evenly over them. On one shared socket whichever
worker woke first took a whole burst: all 32 connections a client opened at once,
seen in 6 of 32 runs of wrk, left the other worker idle for as long as they lasted.
The parent binds the port too (it stays bound, and a port in use fails the start at
once) but never listens, so no connection waits on it. A worker that dies takes its
queue of connections not yet accepted with it; new ones go to the others.

The workers get their settings as JSON in SWITCHYARD_WORKER_SETTINGS (no worker
reads the YAML file or the SWITCHYARD_* variables again, so all agree) and the run
directory in SWITCHYARD_WORKER_RUN_DIR. On shutdown each worker closes its socket,
so new connections are refused once all have, and lets its open requests and
streams finish for up to `shutdown_grace_s`. A worker that exits is marked dead in
the metrics files (its live gauges leave the aggregate) whether it exited cleanly or
not.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    # Bound, never listened on: the port is ours, or the start fails here.
    sock = OwnSocket(settings.host, settings.port).bind()
    port = OwnSocket(settings.host, sock.getsockname()[1])  # port 0: the one it got
    supervisor = Supervisor(config, port, metrics)
    try:
        supervisor.run()
    finally:
        sock.close()
        shutil.rmtree(run, ignore_errors=True)
    return 1 if supervisor.failed else 0


@dataclass(frozen=True)
class OwnSocket:
    """A listening socket each worker binds for itself: uvicorn hands every worker the
    supervisor's sockets, pickled, and this one unpickles in the worker as a new
    socket on the port with SO_REUSEPORT."""

    host: str
    port: int

    def bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self.host, self.port))
        return sock

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return _bound, (self.host, self.port)


def _bound(host: str, port: int) -> socket.socket:
    return OwnSocket(host, port).bind()


class Supervisor(Multiprocess):
    """uvicorn's supervisor, and: each worker's own socket, worker exits marked in the
    metrics files, and whether a worker failed to start (`failed`)."""

    def __init__(self, config: uvicorn.Config, port: OwnSocket, metrics: Path) -> None:
        # uvicorn only pickles its sockets into the workers, where `port` becomes one.
        super().__init__(config, [port])  # type: ignore[list-item]
        self.metrics = metrics
        self.failed = False
        self._known: dict[int, Process] = {}

    def keep_subprocess_alive(self) -> None:
        super().keep_subprocess_alive()
        self._reap()

    def handle_signals(self) -> None:
        super().handle_signals()
        self._reap()

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
