"""A real Prometheus (Debian's package) scrapes the session's gateway — the real vLLM
engine on the demo model, with an adapter — during a short bounded load; then every
PromQL expression of every Grafana panel must return data through Prometheus's HTTP
API, and the counters must match the load that was sent."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import MODEL_ID, Gateway
from tests.servers import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
STREAMED, PLAIN = 12, 12

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def prometheus(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: `make test` installs Debian's package"
    work = tmp_path_factory.mktemp("prometheus")
    target = urlparse(gateway.url).netloc
    config = work / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: switchyard\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    check = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    log = (work / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(url + "/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(ready, timeout=60, interval=0.25)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def scrape(url: str) -> dict[str, float]:
    """The gateway's /metrics as {'name{labels}': value} summed over labels by name."""
    totals: dict[str, float] = {}
    text = httpx.get(url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


async def load(url: str) -> int:
    """STREAMED + PLAIN chat requests, a third on the `shout` adapter; returns the
    sum of usage.completion_tokens the clients were told."""
    tokens = 0

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal tokens
        body: dict[str, Any] = {
            "model": "shout" if i % 3 == 0 else MODEL_ID,
            "messages": [{"role": "user", "content": f"Name {i % 5 + 2} colours."}],
            "max_tokens": 12,
            "temperature": 0,
        }
        if i < STREAMED:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        usage = json.loads(line[6:]).get("usage")
                        if usage:
                            tokens += usage["completion_tokens"]
        elif i % 4 == 1:  # the Responses API, counted under its own endpoint
            ask = {"model": body["model"], "input": body["messages"][0]["content"]}
            ask |= {"max_output_tokens": 12, "temperature": 0}
            r = await client.post("/v1/responses", json=ask)
            assert r.status_code == 200, r.text
            tokens += r.json()["usage"]["output_tokens"]
        else:
            r = await client.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            tokens += r.json()["usage"]["completion_tokens"]

    # Every request a generation (no cached answers): the load spans several scrapes.
    fresh = {"Cache-Control": "no-cache, no-store"}
    async with httpx.AsyncClient(base_url=url, timeout=120, headers=fresh) as client:
        sem = asyncio.Semaphore(4)

        async def bounded(i: int) -> None:
            async with sem:
                await one(client, i)

        await asyncio.gather(*(bounded(i) for i in range(STREAMED + PLAIN)))
    return tokens


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(prometheus + "/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_every_dashboard_query_returns_data_and_counts_match(
    gateway: Gateway, prometheus: str
) -> None:
    before = scrape(gateway.url)
    told_tokens = asyncio.run(load(gateway.url))
    after = scrape(gateway.url)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert delta("switchyard_requests_total") == STREAMED + PLAIN
    assert delta("switchyard_completion_tokens_total") == told_tokens
    assert delta("switchyard_time_to_first_token_seconds_count") == STREAMED + PLAIN
    assert delta("switchyard_inter_token_latency_seconds_count") > 0

    # Prometheus has scraped the final values...
    final = after["switchyard_requests_total"]
    assert wait_until(
        lambda: (
            (v := query(prometheus, "sum(switchyard_requests_total)"))
            and float(v[0]["value"][1]) == final
        ),
        timeout=15,
        interval=0.5,
    )
    by_endpoint = query(prometheus, "sum by (endpoint) (switchyard_requests_total)")
    assert {r["metric"]["endpoint"] for r in by_endpoint} >= {"chat", "responses"}
    streamed = query(prometheus, 'sum(switchyard_time_to_first_token_seconds_count{stream="true"})')
    assert float(streamed[0]["value"][1]) >= STREAMED
    # ...and every panel of every dashboard has something to draw.
    assert DASHBOARDS
    empty = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                if not query(prometheus, target["expr"]):
                    empty.append(f"{path.name}: {panel['title']}: {target['expr']}")
    assert not empty, "\n".join(empty)


def test_shipped_prometheus_config_is_valid() -> None:
    config = ROOT / "deploy" / "prometheus" / "prometheus.yml"
    check = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    import yaml

    provider = yaml.safe_load(
        (ROOT / "grafana/provisioning/dashboards/switchyard.yaml").read_text()
    )
    assert provider["providers"][0]["type"] == "file"
    datasource = yaml.safe_load(
        (ROOT / "grafana/provisioning/datasources/prometheus.yaml").read_text()
    )
    uids = {d["uid"] for d in datasource["datasources"]}
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] in uids
