"""A real `redis-server` (Debian's package) on a free loopback port, for tests: one
per test (`redis_server`), and one for the session's vLLM gateway (`session_redis`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import free_port, wait_until


class RedisServer:
    """`persistent`: an append-only file synced on every write, so a `kill -9` and a
    restart keep the data (what an operator runs for rate limits that must survive
    one). `password`: clients must AUTH with it (`requirepass`)."""

    def __init__(
        self, workdir: Path, *, persistent: bool = False, password: str | None = None
    ) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed: `make test` installs Debian's package"
        self.binary = binary
        self.port = free_port()
        self.workdir = workdir
        self.persistent = persistent
        self.password = password  # `requirepass`
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        aof = ["yes", "--appendfsync", "always"] if self.persistent else ["no"]
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", *aof, "--dir", str(self.workdir),
             *(["--requirepass", self.password] if self.password else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        assert wait_until(self._answers, timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            os.kill(self.proc.pid, signal.SIGCONT)  # if paused
            self.proc.wait()

    def pause(self) -> None:
        """Stall it (SIGSTOP): connections open, nothing answered."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def _answers(self) -> bool:
        import socket

        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
            return True
        return False


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def session_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One for the session's vLLM gateway (its response cache)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
