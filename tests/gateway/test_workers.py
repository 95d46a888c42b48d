"""`switchyard serve --workers 2` (a real process: a supervisor and two workers on one
socket) in front of a `vllm serve` double with runtime LoRA, and a real Redis: what
one process keeps to itself is shared by the workers, or refused at start-up.

Which worker answers is up to the kernel; a keep-alive connection stays with the
worker that accepted it, and an admin's /metrics says which one that is
(`x-switchyard-worker`), so `Workers` keeps one connection on each.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from starlette.requests import Request
from starlette.responses import Response

from tests.doubles.vllm import VLLMServerDouble
from tests.gateway.test_adapters import make_adapter
from tests.gateway.test_shutdown import assert_drains_after_sigterm
from tests.redis_server import RedisServer
from tests.servers import free_port, serve, wait_until

ADMIN, LIMITED, ONE = "sy-admin-key", "sy-limited-key", "sy-one-at-a-time"
RPM = 4
CHAT = {"model": "base", "messages": [{"role": "user", "content": "hi"}]}


class CountingDouble(VLLMServerDouble):
    """The double, counting its health probes and adapter loads."""

    probes: int = 0
    loads: int = 0

    async def _health(self, request: Request) -> Response:
        self.probes += 1
        return await super()._health(request)

    async def _load(self, request: Request) -> Response:
        self.loads += 1
        return await super()._load(request)


@contextlib.contextmanager
def gateway(config: dict[str, Any], work: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`switchyard serve --config` with `config` (and `args`), ready; then SIGTERM."""
    path = work / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "SY_ADMIN": ADMIN, "SY_LIMITED": LIMITED, "SY_ONE": ONE}
    log = (work / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path), *args],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{config['port']}"

    def ready() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(url + "/ready", timeout=2).status_code == 200
        return proc.poll() is not None

    try:
        assert wait_until(ready, timeout=60, interval=0.2)
        assert proc.poll() is None, (work / "gateway.log").read_text()
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


class Workers:
    """A connection on each worker, found by opening connections until every worker
    answered one, and checked again before each use."""

    def __init__(self, url: str) -> None:
        self.url = url
        parts = httpx.URL(url)
        self.host, self.port = parts.host, parts.port or 80
        self.clients: dict[int, httpx.Client] = {}

    def find(self, count: int = 2) -> list[int]:
        for _ in range(200):
            if len(self.clients) >= count:
                return sorted(self.clients)
            client = self._client()
            pid = self._pid(client)
            if pid in self.clients:
                client.close()
            else:
                self.clients[pid] = client
        raise AssertionError(f"found workers {sorted(self.clients)} only, not {count}")

    def on(self, pid: int) -> httpx.Client:
        """A client whose connection is on worker `pid` (the keep-alive may have
        lapsed since: then a new connection is looked for)."""
        for _ in range(200):
            client = self.clients.get(pid) or self._client()
            if self._pid(client) == pid:
                self.clients[pid] = client
                return client
            client.close()
            self.clients.pop(pid, None)
        raise AssertionError(f"no connection reaches worker {pid}")

    def scrape(self, pid: int) -> str:
        r = self.on(pid).get("/metrics")
        assert r.headers["x-switchyard-worker"] == str(pid)
        return r.text

    @contextlib.contextmanager
    def socket_on(self, pid: int) -> Iterator[socket.socket]:
        """A bare connection on worker `pid`, for a request whose answer is not read."""
        for _ in range(200):
            conn = socket.create_connection((self.host, self.port), timeout=30)
            if worker_of(conn) == str(pid):
                try:
                    yield conn
                finally:
                    conn.close()
                return
            conn.close()
        raise AssertionError(f"no connection reaches worker {pid}")

    def close(self) -> None:
        for client in self.clients.values():
            client.close()

    def _client(self) -> httpx.Client:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        auth = {"Authorization": f"Bearer {ADMIN}"}
        return httpx.Client(base_url=self.url, headers=auth, limits=limits, timeout=30)

    @staticmethod
    def _pid(client: httpx.Client) -> int:
        r = client.get("/metrics")
        assert r.status_code == 200, r.text
        return int(r.headers["x-switchyard-worker"])


def total(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    found = 0.0
    for line in text.splitlines():
        match = re.match(rf"{name}(?:{{(.*)}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            found += float(match.group(2))
    return found


@pytest.fixture(scope="module")
def double() -> Iterator[tuple[CountingDouble, str]]:
    upstream = CountingDouble()
    with serve(upstream.app()) as url:
        yield upstream, url


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    make_adapter(root / "a1", base="base")
    return root


@pytest.fixture(scope="module")
def workers(
    double: tuple[CountingDouble, str],
    redis: RedisServer,
    adapters: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Workers]:
    _, upstream = double
    port = free_port()
    keys = [
        {"label": "admin", "key_env": "SY_ADMIN", "models": ["*"], "admin": True},
        {"label": "limited", "key_env": "SY_LIMITED", "models": ["*"], "rpm": RPM},
        {"label": "one", "key_env": "SY_ONE", "models": ["*"], "max_concurrent": 1},
    ]
    engine = {"url": upstream, "upstream_model": "up-model", "enable_lora": True, "max_loras": 4}
    config = {
        "port": port,
        "auth": {"keys": keys, "rate_limit": {"backend": "redis", "redis_url": redis.url}},
        "responses": {"backend": "none"},
        "cache": {"backend": "none"},
        "balancer": {"probe_interval_s": 0.3},
        "engines": [
            {"name": "up", "kind": "openai_remote", "model_id": "base", "options": engine,
             "adapter_root": str(adapters)},
        ],
    }  # fmt: skip
    with gateway(config, tmp_path_factory.mktemp("gateway"), "--workers", "2"):
        pinned = Workers(f"http://127.0.0.1:{port}")
        try:
            yield pinned
        finally:
            pinned.close()


def worker_of(conn: socket.socket) -> str | None:
    """The pid of the worker that holds `conn` (its /metrics answer says), the
    connection kept open."""
    conn.sendall(
        f"GET /metrics HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {ADMIN}\r\n\r\n"
        .encode()
    )  # fmt: skip
    reader = conn.makefile("rb")
    head = [reader.readline()]
    while head[-1] not in (b"\r\n", b""):
        head.append(reader.readline())
    fields = dict(line.decode().rstrip().split(": ", 1) for line in head[1:-1])
    reader.read(int(fields["content-length"]))
    reader.close()
    return fields.get("x-switchyard-worker")


def test_connections_opened_at_once_spread_over_the_workers(workers: Workers) -> None:
    """Each worker listens on a socket of its own (SO_REUSEPORT): the kernel shares a
    burst of new connections out. On one shared socket the worker that woke first
    could take the whole burst, and the other served none of it."""
    workers.find(2)  # both are listening
    conns = [socket.create_connection((workers.host, workers.port), timeout=30) for _ in range(32)]
    try:
        held = Counter(worker_of(conn) for conn in conns)
    finally:
        for conn in conns:
            conn.close()
    assert len(held) == 2, held
    assert min(held.values()) >= 4, held  # an even share is 16; below 4: p < 1e-5


def test_requests_spread_over_the_workers_and_metrics_count_all_of_them(
    workers: Workers,
) -> None:
    one, other = workers.find(2)
    before = total(workers.scrape(one), "switchyard_requests_total")
    sent = {one: 3, other: 5}
    for pid, count in sent.items():
        for i in range(count):
            body = {**CHAT, "stream": i % 2 == 1}
            r = workers.on(pid).post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
    # Counters are written as each request finishes; the per-worker gauge is copied
    # each second, so it is waited for.
    for scraper in (one, other):
        assert wait_until(
            lambda s=scraper: (
                total(workers.scrape(s), "switchyard_requests_total") == before + sum(sent.values())
            ),
            timeout=20,
        )
    text = workers.scrape(other)
    assert total(text, "switchyard_workers") == 2
    assert total(text, "switchyard_requests_total", stream="true") >= 1

    def each_counted() -> bool:
        text = workers.scrape(one)
        finished = {pid: total(text, "switchyard_worker_requests", pid=str(pid)) for pid in sent}
        return all(finished[pid] >= sent[pid] for pid in sent)

    assert wait_until(each_counted, timeout=20)


def test_a_rate_limit_in_redis_holds_across_workers(workers: Workers) -> None:
    pids = workers.find(2)
    limited = {"Authorization": f"Bearer {LIMITED}"}
    statuses = {pid: [] for pid in pids}  # type: dict[int, list[int]]
    for i in range(3 * RPM):
        pid = pids[i % 2]
        r = workers.on(pid).post("/v1/chat/completions", json=CHAT, headers=limited)
        statuses[pid].append(r.status_code)
    codes = [code for answered in statuses.values() for code in answered]
    assert codes.count(200) == RPM  # not RPM per worker
    assert codes.count(429) == 2 * RPM
    assert all(200 in answered for answered in statuses.values())  # both admitted some


def test_max_concurrent_counts_across_workers(
    workers: Workers, double: tuple[CountingDouble, str]
) -> None:
    upstream, _ = double
    holder, other = workers.find(2)
    one = {"Authorization": f"Bearer {ONE}"}
    chats = upstream.chats
    upstream.before_first_event_s = 60.0
    try:
        with workers.socket_on(holder) as held:  # a stream that has not started yet
            body = json.dumps({**CHAT, "stream": True}).encode()
            held.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
                + f"Authorization: Bearer {ONE}\r\nContent-Type: application/json\r\n".encode()
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            assert wait_until(lambda: upstream.chats == chats + 1, timeout=10)
            refused = workers.on(other).post("/v1/chat/completions", json=CHAT, headers=one)
            assert refused.status_code == 429, refused.text
            assert "requests in flight" in refused.json()["error"]["message"]
    finally:
        upstream.before_first_event_s = 0.0

    def admitted() -> bool:
        r = workers.on(other).post("/v1/chat/completions", json=CHAT, headers=one)
        return r.status_code == 200

    assert wait_until(admitted, timeout=20)  # the held stream left when it was closed


def test_adapters_loaded_or_unloaded_through_one_worker_reach_all(
    workers: Workers, double: tuple[CountingDouble, str]
) -> None:
    upstream, _ = double
    loader, other = workers.find(2)
    r = workers.on(loader).post("/v1/adapters", json={"name": "a1", "path": "a1"})
    assert r.status_code == 200, r.text
    upstream_name = f"a1@{r.json()['digest'][:12]}"
    assert upstream_name in upstream.adapters
    adapter_chat = {**CHAT, "model": "a1"}

    def answers(pid: int, status: int) -> bool:
        r = workers.on(pid).post("/v1/chat/completions", json=adapter_chat)
        return r.status_code == status

    assert wait_until(lambda: answers(other, 200), timeout=20)
    listed = workers.on(other).get("/v1/adapters").json()["data"]
    assert [(a["name"], a["state"]) for a in listed] == [("a1", "ready")]

    # Unloaded through the other worker: once it answers, no worker routes to it and
    # the upstream no longer has it.
    r = workers.on(other).delete("/v1/adapters/a1")
    assert r.status_code == 200, r.text
    assert upstream_name not in upstream.adapters
    assert answers(loader, 404)
    assert answers(other, 404)
    assert workers.on(loader).get("/v1/adapters").json()["data"] == []
    # ... and it stays unloaded: no worker puts it back over the next probes.
    loads, probes = upstream.loads, upstream.probes
    assert wait_until(lambda: upstream.probes >= probes + 8, timeout=30)
    assert upstream.loads == loads
    assert upstream_name not in upstream.adapters
    assert answers(loader, 404)


def test_a_worker_that_dies_is_replaced_and_its_counts_stay(workers: Workers) -> None:
    victim, survivor = workers.find(2)
    counted = total(workers.scrape(survivor), "switchyard_requests_total")
    assert counted > 0
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        with contextlib.suppress(AssertionError, httpx.HTTPError):
            workers.clients.pop(victim, None)
            text = workers.scrape(survivor)
            pids = re.findall(r'switchyard_worker_requests{pid="(\d+)"}', text)
            return total(text, "switchyard_workers") == 2 and str(victim) not in pids
        return False

    assert wait_until(replaced, timeout=60)
    assert total(workers.scrape(survivor), "switchyard_requests_total") == counted
    assert len(workers.find(2)) == 2  # the new worker takes connections


@pytest.mark.parametrize(
    ("change", "how", "says"),
    [
        ({"engines": [{"name": "local", "kind": "vllm", "model_id": "m"}]}, "flag", "vllm serve"),
        ({"auth": {"keys": [{"label": "k", "key_env": "SY_ADMIN", "models": ["*"], "rpm": 5}]}},
         "env", "auth.rate_limit.backend: redis"),
        ({"responses": {"backend": "memory"}}, "file", "responses.backend: redis"),
        ({"engines": [{"name": "up", "kind": "openai_remote", "model_id": "m",
                       "max_in_flight": 1, "options": {"url": "http://127.0.0.1:9"}}]},
         "flag", "max_in_flight 1"),
    ],
)  # fmt: skip
def test_what_workers_cannot_share_is_refused_at_start(
    change: dict[str, Any], how: str, says: str, tmp_path: Path
) -> None:
    engine = {"name": "up", "kind": "openai_remote", "model_id": "m", "options": {"url": "x"}}
    config = {"port": free_port(), "responses": {"backend": "none"}, "engines": [engine], **change}
    args, env = [], {**os.environ, "SY_ADMIN": ADMIN}
    if how == "flag":
        args = ["--workers", "2"]
    elif how == "env":
        env["SWITCHYARD_WORKERS"] = "2"
    else:
        config["workers"] = 2
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path), *args],
        capture_output=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    stderr = done.stderr.decode()
    assert stderr.startswith("switchyard: cannot serve with 2 workers: "), stderr
    assert says in stderr
    assert "Traceback" not in stderr


def test_sigterm_lets_streams_on_workers_finish(tmp_path: Path) -> None:
    """As tests/gateway/test_shutdown.py, with two workers: new connections are
    refused at once, the stream in progress goes on to its end."""
    port = free_port()
    words = 30  # one every 0.2 s: the stream runs for about 6 s
    engine = {"reply": " ".join(f"w{i}" for i in range(words)), "token_delay_s": 0.2}
    config = {
        "port": port, "shutdown_grace_s": 20, "auth": {"enabled": False},
        "responses": {"backend": "none"},
        "engines": [{"name": "s", "kind": "scripted", "model_id": "s", "options": engine}],
    }  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with gateway(config, tmp_path, "--workers", "2") as proc:
        assert_drains_after_sigterm(proc, url, words)
        assert proc.wait(timeout=30) == 0
    log = (tmp_path / "gateway.log").read_text()
    assert "Traceback" not in log
    assert "Stopping parent process" in log
