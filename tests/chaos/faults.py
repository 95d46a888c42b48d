"""A seeded schedule of faults, run against the cluster in three lanes at once:

    replicas  kill -9 then restart (at once, or after a pause), SIGSTOP/SIGCONT, and
              the fault proxy's 500s, garbage and cuts: one fault at a time, so
              another replica can always serve (the lane waits for a restarted
              replica to answer before its next fault)
    redis     kill -9 then restart, SIGSTOP/SIGCONT
    adapters  load and unload an adapter through gateway A during traffic

The lanes start after a calm stretch (the load alone: the latency baseline). Each
lane plays every kind once (in a seeded order, even past the run's duration)
before drawing at random, so a short run still covers them all. Same seed, same
schedule.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from tests.chaos import invariants
from tests.chaos.cluster import ADMIN, CHURNED, DECLARED, Cluster
from tests.replicas import Replica

REPLICA_FAULTS = ("kill", "freeze", "error", "garbage", "cut")
REDIS_FAULTS = ("redis_kill", "redis_stall")


def calm_s(duration_s: float) -> float:
    """The fault-free stretch before the faults: a tenth of their duration, 10 to 60 s."""
    return min(max(duration_s / 10, 10.0), 60.0)


@dataclass(frozen=True)
class Fault:
    kind: str
    target: str
    start: float  # time.monotonic()
    end: float


class _Kinds:
    """Every kind once in a seeded order, then at random."""

    def __init__(self, rng: random.Random, kinds: tuple[str, ...]) -> None:
        self.rng, self.kinds = rng, kinds
        self.first = list(kinds)
        rng.shuffle(self.first)

    def draw(self) -> str:
        return self.first.pop(0) if self.first else self.rng.choice(self.kinds)


class Faults:
    def __init__(self, cluster: Cluster, seed: int, duration_s: float) -> None:
        self.cluster = cluster
        self.seed = seed
        self.duration_s = duration_s
        self.log: list[Fault] = []
        self.errors: list[str] = []  # a fault that could not be injected or undone
        self.churned_loaded = False
        # Set while a killed replica starts again: the clients hold new requests, as
        # on this VM a vLLM started beside the other replica's busy pinned core hung
        # for minutes in sched_setaffinity (the kill itself and the pause after it
        # happen under load).
        self.booting = threading.Event()
        self.calm = (0.0, 0.0)  # monotonic span with the load and no fault
        self.back_after_s: list[float] = []  # each restart: answering → routable, adapters on
        self._lock = threading.Lock()

    def run(self) -> None:
        """A calm stretch (the same load with no fault: the latency baseline), then all
        lanes, until `duration_s` of faults has passed and every fault is undone."""
        self.calm = (time.monotonic(), time.monotonic() + calm_s(self.duration_s))
        time.sleep(self.calm[1] - self.calm[0])
        self.deadline = time.monotonic() + self.duration_s
        lanes = [self._replicas, self._redis, self._adapters]
        threads = [
            threading.Thread(target=self._guarded, args=(lane, random.Random(f"{self.seed}:{i}")))
            for i, lane in enumerate(lanes)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _guarded(self, lane: Callable[[random.Random], None], rng: random.Random) -> None:
        try:
            lane(rng)
        except Exception as exc:  # reported as a violation, never swallowed
            self.errors.append(f"{lane.__name__}: {type(exc).__name__}: {exc}")

    def _record(self, kind: str, target: str, start: float) -> None:
        with self._lock:
            self.log.append(Fault(kind, target, start, time.monotonic()))

    def _more(self, kinds: _Kinds | None = None) -> bool:
        return time.monotonic() < self.deadline or bool(kinds and kinds.first)

    # -- lanes ----------------------------------------------------------------------

    def _replicas(self, rng: random.Random) -> None:
        kinds = _Kinds(rng, REPLICA_FAULTS)
        replicas, proxy = self.cluster.replicas, self.cluster.proxy
        while self._more(kinds):
            time.sleep(rng.uniform(1, 4))
            kind, hold = kinds.draw(), rng.uniform(3, 8)
            start = time.monotonic()
            if kind == "kill":
                replica = rng.choice(replicas)
                replica.kill()
                time.sleep(rng.choice((0.0, hold)))  # restarts at once, or after a pause
                self.booting.set()
                try:
                    replica.start()
                    replica.wait_ready()
                finally:
                    self.booting.clear()
                self.back_after_s.append(self._taken_back(replica))
                target = replica.name
            elif kind == "freeze":
                replica = rng.choice(replicas)
                replica.signal(signal.SIGSTOP)
                time.sleep(hold)
                replica.signal(signal.SIGCONT)
                target = replica.name
            else:
                proxy.mode = kind  # type: ignore[assignment]
                time.sleep(hold)
                proxy.mode = "pass"
                target = replicas[0].name
            self._record(kind, target, start)

    def _taken_back(self, replica: Replica, timeout: float = 60) -> float:
        """Seconds from a restarted replica answering until both gateways route to it
        again and it holds the declared adapters (the gateways' restore)."""
        late, seconds = invariants.recovered(self.cluster, self.adapters, timeout, [replica])
        self.errors += [f"{replica.name} not taken back after restarting: {m}" for m in late]
        return seconds

    def _redis(self, rng: random.Random) -> None:
        kinds = _Kinds(rng, REDIS_FAULTS)
        redis = self.cluster.redis
        while self._more(kinds):
            time.sleep(rng.uniform(3, 8))
            kind, hold = kinds.draw(), rng.uniform(1, 4)
            start = time.monotonic()
            if kind == "redis_kill":
                redis.stop()
                time.sleep(hold)
                redis.start()
            else:
                redis.pause()
                time.sleep(hold)
                redis.resume()
            self._record(kind, "redis", start)

    def _adapters(self, rng: random.Random) -> None:
        gateway = self.cluster.gateways[0]
        with httpx.Client(base_url=gateway, headers=ADMIN.headers, timeout=120) as client:
            while self._more():
                time.sleep(rng.uniform(4, 10))
                start = time.monotonic()
                if self.churned_loaded:
                    r = client.delete(f"/v1/adapters/{CHURNED}")
                    kind = "unload"
                else:
                    r = client.post("/v1/adapters", json={"name": CHURNED, "path": CHURNED})
                    kind = "load"
                if r.status_code == 200:
                    self.churned_loaded = kind == "load"
                elif r.status_code not in (409, 503):  # busy, or no replica could take it
                    self.errors.append(f"adapter {kind}: {r.status_code} {r.text[:300]}")
                self._record(f"adapter_{kind}", CHURNED, start)

    def adapters(self) -> set[str]:
        """The adapters loaded through the gateways now: the declared ones, and the
        churned one while the adapter lane has it loaded (it may still be loading it
        while a restarted replica is taken back, and ends the run either way)."""
        return set(DECLARED) | ({CHURNED} if self.churned_loaded else set())

    def calm_at(self, t: float) -> bool:
        """Was `t` in the calm stretch before any fault?"""
        return self.calm[0] <= t <= self.calm[1]

    def during(self, t: float) -> bool:
        """Was a replica or Redis fault under way at `t`?"""
        return any(f.start <= t <= f.end for f in self.log if not f.kind.startswith("adapter"))
