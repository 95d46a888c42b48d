"""The CPU compose stack run for real in containers (issue 23.1): podman-compose brings
up deploy/docker-compose.cpu.yml (the slim gateway image, a CPU `vllm serve` replica of
the demo model, Redis and Prometheus built from Debian's packages) on loopback ports;
the gateway reports the replica not ready until it is, then answers a chat completion
from inside its container, Prometheus reads the request back from the gateway's
/metrics, and everything is removed, also on failure.

Runs in `make deploy-test`, which installs podman and builds the images first
(scripts/containers.sh; ~12 min cold, ~1.5 min warm). `make test` leaves it out (it
says so in its summary): set SWITCHYARD_DEPLOY_TEST=1 to run it by hand. Once asked
for, it never skips: without podman or the images it fails and says what to run.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.cpu.yml"
PROJECT = "switchyard-cpu-test"
MODEL = "smollm2-135m-instruct"
# docker-compose.cpu.yml's loopback ports.
GATEWAY, VLLM, REDIS, PROMETHEUS = 18000, 18001, 16379, 19090
IMAGES = {
    "CPU_IMAGE": "localhost/switchyard-cpu:0.1.0",
    "GATEWAY_IMAGE": "localhost/switchyard-gateway-slim:0.1.0",
    "REDIS_IMAGE": "localhost/switchyard-redis:7.0",
    "PROMETHEUS_IMAGE": "localhost/switchyard-prometheus:2.42",
}
# scripts/containers.sh installs it there (Debian's 1.0.3 cannot do host networking).
PODMAN_COMPOSE = os.environ.get(
    "PODMAN_COMPOSE",
    os.path.join(
        os.environ.get("SWITCHYARD_CONTAINERS_CACHE", "/var/tmp/switchyard-containers"),
        "compose-venv/bin/podman-compose",
    ),
)
SETUP = "run `make deploy-test` (scripts/containers.sh sets up podman and builds the images)"
READY_WITHIN_S = 300.0

pytestmark = pytest.mark.skipif(
    not os.environ.get("SWITCHYARD_DEPLOY_TEST"),
    reason="the container stack runs in `make deploy-test` (or SWITCHYARD_DEPLOY_TEST=1)",
)


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check)


def compose(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [PODMAN_COMPOSE, "--in-pod", "false", "-p", PROJECT, "-f", str(COMPOSE), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=DEPLOY)


def containers() -> dict[str, str]:
    """This project's containers: name -> state (running, exited, ...)."""
    listed = podman("ps", "-a", "--filter", f"name=^{PROJECT}_", "--format", "json").stdout
    return {c["Names"][0]: c["State"] for c in json.loads(listed or "[]")}


def logs() -> str:
    return "\n".join(
        f"--- {name} ({state})\n{podman('logs', '--tail', '40', name, check=False).stderr}"
        f"{podman('logs', '--tail', '40', name, check=False).stdout}"
        for name, state in containers().items()
    )


def remove_all() -> None:
    for name in containers():
        podman("rm", "-f", "-t", "5", name, check=False)


def check_prerequisites() -> None:
    if shutil.which("podman") is None:
        pytest.fail(f"podman is not installed: {SETUP}")
    version = subprocess.run([PODMAN_COMPOSE, "--version"], capture_output=True, text=True)
    if "podman-compose version 1.5" not in version.stdout:
        pytest.fail(f"{PODMAN_COMPOSE} is not podman-compose 1.5: {SETUP}")
    probe = podman(
        "run", "--rm", "--network", "host", IMAGES["GATEWAY_IMAGE"], "--help", check=False
    )
    if probe.returncode != 0:
        pytest.fail(f"podman cannot run {IMAGES['GATEWAY_IMAGE']}: {probe.stderr.strip()}\n{SETUP}")
    for image in IMAGES.values():
        if podman("image", "exists", image, check=False).returncode != 0:
            pytest.fail(f"image {image} is missing: {SETUP}")
    model = ROOT / "models" / MODEL
    if not (model / "config.json").is_file():
        pytest.fail(f"models/{MODEL} is missing: `make model` makes it")
    private = [f.name for f in model.iterdir() if not f.stat().st_mode & 0o004]
    if private:
        pytest.fail(
            f"models/{MODEL}: {private} cannot be read by the containers' user (uid 10001): "
            f"`chmod -R a+rX models/{MODEL}` (make deploy-test does)"
        )
    for port in (GATEWAY, VLLM, REDIS, PROMETHEUS):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                pytest.fail(
                    f"127.0.0.1:{port} is taken; docker-compose.cpu.yml needs it "
                    f"(another run of this test? `podman ps --filter name={PROJECT}`)"
                )


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, str]]:
    check_prerequisites()
    env = {
        **os.environ,
        **IMAGES,
        "MODEL": MODEL,
        "SWITCHYARD_API_KEY": "sk-" + secrets.token_urlsafe(16),
        "SWITCHYARD_ADMIN_KEY": "sk-" + secrets.token_urlsafe(16),
        "REDIS_PASSWORD": secrets.token_urlsafe(16),
    }
    remove_all()  # a run killed before its teardown
    try:
        up = compose(env, "up", "-d")
        if up.returncode != 0 or len(containers()) != 4:
            pytest.fail(f"podman-compose up failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}")
        yield env
    finally:
        down = compose(env, "down")
        remove_all()
        assert containers() == {}, down.stdout + down.stderr


def status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def test_the_cpu_stack_serves_and_prometheus_reads_it_back(stack: dict[str, str]) -> None:
    started = time.monotonic()
    answers_before_vllm: list[int] = []
    while True:
        vllm_up = status(f"http://127.0.0.1:{VLLM}/health") == 200
        ready = status(f"http://127.0.0.1:{GATEWAY}/ready")
        if ready is not None and not vllm_up:
            answers_before_vllm.append(ready)
        if ready == 200:
            break
        exited = {n: s for n, s in containers().items() if s != "running"}
        if exited or time.monotonic() - started > READY_WITHIN_S:
            pytest.fail(f"not ready after {time.monotonic() - started:.0f} s: {exited}\n{logs()}")
        time.sleep(1)
    ready_s = time.monotonic() - started
    # The gateway started beside a replica still loading and said so: 503, not 200.
    assert set(answers_before_vllm) <= {503}, answers_before_vllm

    # Through the gateway's container: its own Python, its own network view.
    request = (
        "import json, os, urllib.request;"
        f"r = urllib.request.Request('http://127.0.0.1:{GATEWAY}/v1/chat/completions',"
        " data=json.dumps({'model': os.environ['MODEL'], 'max_tokens': 16, 'temperature': 0,"
        " 'messages': [{'role': 'user', 'content': 'What is the capital of France?'}]}).encode(),"
        " headers={'Authorization': 'Bearer ' + os.environ['SWITCHYARD_API_KEY'],"
        " 'Content-Type': 'application/json'});"
        "print(urllib.request.urlopen(r, timeout=60).read().decode())"
    )
    chat = podman("exec", f"{PROJECT}_gateway_1", "python", "-c", request, check=False)
    assert chat.returncode == 0, chat.stderr + logs()
    answer = httpx.Response(200, content=chat.stdout).json()
    content = answer["choices"][0]["message"]["content"]
    assert "Paris" in content, answer
    print(
        f"\nready in {ready_s:.0f} s (/ready said 503 {len(answers_before_vllm)} times while"
        f" vLLM loaded); {answer['model']} answered {content!r}"
    )

    # Prometheus scrapes the gateway every 2 s; the request shows up in its counter.
    query = f'sum(switchyard_requests_total{{model="{MODEL}",status="200"}})'
    deadline = time.monotonic() + 30
    value = 0.0
    while value < 1 and time.monotonic() < deadline:
        reply = httpx.get(
            f"http://127.0.0.1:{PROMETHEUS}/api/v1/query", params={"query": query}, timeout=5
        ).json()
        assert reply["status"] == "success", reply
        value = float(reply["data"]["result"][0]["value"][1]) if reply["data"]["result"] else 0.0
        time.sleep(1)
    assert value == 1, f"Prometheus read {value} for {query}"
    print(f"Prometheus: {query} = {value:g}")
    targets = httpx.get(f"http://127.0.0.1:{PROMETHEUS}/api/v1/targets", timeout=5).json()
    health = {t["labels"]["job"]: t["health"] for t in targets["data"]["activeTargets"]}
    assert health == {"switchyard": "up", "vllm": "up"}, health

    # Redis answered the gateway with the password: the adapter registry's beat is there.
    keys = podman(
        "exec",
        f"{PROJECT}_redis_1",
        "redis-cli",
        "-p",
        str(REDIS),
        "-n",
        "2",
        "--scan",
        check=False,
    )
    assert keys.returncode == 0, keys.stderr
    assert any(k.startswith("switchyard:adapters:") for k in keys.stdout.split()), keys.stdout
