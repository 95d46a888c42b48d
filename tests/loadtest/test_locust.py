"""A short, bounded locust run (8 users, 10 s, loopback) of loadtest/locustfile.py
against the gateway in front of the scripted engine, with an API key and the cache on:
zero failures, and every metric the locustfile reports is in its CSV and HTML."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import httpx

from gateway.app import create_app
from gateway.auth.keys import digest
from gateway.settings import AuthSettings, KeySettings, Settings
from tests.gateway.conftest import scripted
from tests.servers import serve, wait_until

ROOT = Path(__file__).resolve().parents[2]
KEY, ADMIN = "sk-locust-test", "sk-locust-admin"


def test_a_bounded_locust_run_has_no_failures_and_reports_its_metrics(tmp_path: Path) -> None:
    auth = AuthSettings(
        keys=[
            KeySettings(label="load", key_sha256=digest(KEY), models=["*"], rpm=100_000),
            KeySettings(label="ops", key_sha256=digest(ADMIN), models=["*"], admin=True),
        ]
    )
    engines = [scripted(reply=" ".join(f"w{i}" for i in range(24)), token_delay_s=0.002)]
    app = create_app(Settings(auth=auth), engines=engines)
    with serve(app) as url:
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=10)
        run = subprocess.run(
            [
                sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"),
                "--host", url, "--headless", "--users", "8", "--spawn-rate", "8",
                "--run-time", "10s", "--stop-timeout", "5", "--only-summary",
                "--csv", str(tmp_path / "run"), "--html", str(tmp_path / "run.html"),
                "--model", "scripted", "--stream-fraction", "0.75", "--repeat-fraction", "0.3",
                "--max-tokens", "16",
            ],
            env={**os.environ, "OPENAI_API_KEY": KEY},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        admin = {"Authorization": f"Bearer {ADMIN}"}  # key labels: admin scrapes only
        metrics = httpx.get(f"{url}/metrics", headers=admin).text
    assert run.returncode == 0, run.stderr[-3000:]
    with (tmp_path / "run_stats.csv").open() as fh:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(fh)}
    stream, plain = "/v1/chat/completions (stream)", "/v1/chat/completions"
    for kind, name in [
        ("POST", stream), ("POST", plain), ("E2E", stream), ("TTFT", stream),
        ("ITL", stream), ("TOKENS/S", stream), ("TOKENS/S", plain),
    ]:  # fmt: skip
        assert int(rows[kind, name]["Request Count"]) > 10, (kind, name)
        assert float(rows[kind, name]["Median Response Time"]) > 0, (kind, name)
    assert rows["", "Aggregated"]["Failure Count"] == "0"
    assert "TTFT" in (tmp_path / "run.html").read_text()
    # The key was used (labelled in metrics) and repeated requests were cache hits.
    assert 'switchyard_key_requests_total{key="load",status="200"}' in metrics
    hits = next(
        line for line in metrics.splitlines()
        if line.startswith('switchyard_cache_lookups_total{model="scripted",result="hit"}')
    )  # fmt: skip
    assert float(hits.split()[-1]) > 0
