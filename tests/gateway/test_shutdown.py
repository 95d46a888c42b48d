"""Graceful shutdown of `switchyard serve` (a real process): on SIGTERM it stops
accepting connections and lets a stream in progress finish."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.servers import free_port, wait_until


def test_sigterm_lets_open_streams_finish(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "gateway.yaml"
    engine = {"reply": " ".join(f"w{i}" for i in range(20)), "token_delay_s": 0.1}
    config.write_text(
        yaml.safe_dump(
            {
                "port": port,
                "shutdown_grace_s": 20,
                "auth": {"enabled": False},
                "engines": [{"name": "s", "kind": "scripted", "model_id": "s", "options": engine}],
            }
        )
    )
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:

        def ready() -> bool:
            try:
                return httpx.get(url + "/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(ready, timeout=30, interval=0.2)
        body = {
            "model": "s",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "temperature": 0,
        }
        text = []
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            for line in lines:
                if '"content":"w' in line:
                    break
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            text = [line for line in lines if line]
        assert text[-1] == "data: [DONE]"
        assert any('"finish_reason":"stop"' in line for line in text)
        assert time.monotonic() - started > 1  # it really was mid-stream
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health", timeout=2)
        # uvicorn re-raises the signal it caught once shut down, so the exit status
        # says "terminated by SIGTERM", as for any well-behaved server.
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)
        assert proc.stderr is not None
        assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
