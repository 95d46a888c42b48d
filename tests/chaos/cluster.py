"""The deployment under test, all real processes on loopback: two `vllm serve`
replicas of the demo model (LoRA on, runtime loading on), a fault proxy in front of
the first, one `redis-server` (append-only, so limits survive its restarts) shared by
two `switchyard serve` gateways for their cache, rate limits and adapter registry,
and three API keys:
an admin, a plain key, and a key with small limits."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway.bench.process import answers, gateway_command, server_process
from tests.chaos.proxy import FaultProxy
from tests.redis_server import RedisServer
from tests.replicas import MODEL, Replica, remote_engines
from tests.servers import free_port

ADAPTERS = Path(__file__).resolve().parents[2] / "adapters"
DECLARED = ("shout", "json")  # in both gateways' settings
CHURNED = "shout2"  # loaded and unloaded at runtime through gateway A, followed by B

PROBE = {"probe_interval_s": 1.0, "probe_timeout_s": 1.0, "unhealthy_after": 2, "ejection_s": 2}
TIMEOUTS = {"connect_timeout_s": 2, "first_token_timeout_s": 10, "idle_timeout_s": 10}
LIMITS = {"rpm": 40, "tpm": 4000}  # the limited key's


@dataclass(frozen=True)
class Key:
    label: str
    secret: str
    admin: bool = False
    limited: bool = False

    @property
    def env(self) -> str:
        return f"CHAOS_{self.label.upper()}_KEY"

    def settings(self) -> dict[str, Any]:
        limits = LIMITS if self.limited else {}
        return {
            "label": self.label,
            "key_env": self.env,
            "models": ["*"],
            "admin": self.admin,
            **limits,
        }

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


KEYS = (
    Key("admin", "sk-chaos-admin", admin=True),
    Key("plain", "sk-chaos-plain"),
    Key("limited", "sk-chaos-limited", limited=True),
)
ADMIN = KEYS[0]


@dataclass
class Cluster:
    replicas: list[Replica]
    proxy: FaultProxy
    redis: RedisServer
    gateways: list[str]  # URLs; gateway A first
    adapter_root: Path

    def ready(self, gateway: str) -> dict[str, Any]:
        """The gateway's own view of its backends (`/ready` as an admin)."""
        r = httpx.get(gateway + "/ready", headers=ADMIN.headers, timeout=5)
        body: dict[str, Any] = r.json()
        return body


def _engines(upstreams: list[tuple[str, str]], adapter_root: Path) -> list[dict[str, Any]]:
    adapters = [{"name": n, "path": str(adapter_root / n)} for n in DECLARED]
    engines = remote_engines(upstreams, adapter_root, TIMEOUTS)
    return [{**engine, "adapters": adapters} for engine in engines]


@contextlib.contextmanager
def cluster(replicas: list[Replica], work: Path) -> Iterator[Cluster]:
    adapter_root = work / "adapters"
    for name in DECLARED:
        shutil.copytree(ADAPTERS / name, adapter_root / name, dirs_exist_ok=True)
    shutil.copytree(ADAPTERS / "shout", adapter_root / CHURNED, dirs_exist_ok=True)
    redis = RedisServer(work, persistent=True)
    redis.start()
    proxy = FaultProxy(replicas[0].url, free_port())
    upstreams = [(replicas[0].name, proxy.url), *((r.name, r.url) for r in replicas[1:])]
    settings = {
        "balancer": {"policy": "adapter_affinity", **PROBE},
        "cache": {"backend": "redis", "redis_url": redis.url, "retry_after_s": 0.5},
        "adapter_registry": {"backend": "redis", "redis_url": redis.url, "timeout_s": 1.0},
        "auth": {
            "enabled": True,
            "keys": [k.settings() for k in KEYS],
            "public_metrics": True,  # the invariants read it as Prometheus would
            "rate_limit": {"backend": "redis", "redis_url": redis.url, "on_redis_error": "deny"},
        },
    }
    env = {**os.environ, **{k.env: k.secret for k in KEYS}, "PYTHONUNBUFFERED": "1"}
    try:
        with proxy.running(), contextlib.ExitStack() as stack:
            urls = []
            for name in ("a", "b"):
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                command = gateway_command(_engines(upstreams, adapter_root), port, work, **settings)
                ready = answers(url, MODEL, ADMIN.headers)
                stack.enter_context(
                    server_process(command, ready, work / f"gateway-{name}.log", env)
                )
                urls.append(url)
            yield Cluster(replicas, proxy, redis, urls, adapter_root)
    finally:
        redis.stop()
