"""Routing policies and the circuit breaker, on backends with no traffic behind them."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from engines.errors import (
    EngineDisconnected,
    EngineOverloaded,
    EngineTimedOut,
    EngineUnavailable,
    GenerationFailed,
    InvalidGenerationRequest,
)
from engines.scripted import ScriptedConfig, ScriptedEngine
from gateway.balancer.backend import Backend, Breaker
from gateway.balancer.errors import NoBackend
from gateway.balancer.policies import (
    AdapterAffinity,
    LeastOutstanding,
    PrefixAffinity,
    RoundRobin,
    RouteKey,
)
from gateway.balancer.pool import POLL_S, Pool
from gateway.settings import BalancerSettings


def backends(n: int, max_loras: int = 1) -> list[Backend]:
    return [
        Backend(ScriptedEngine(f"b{i}", "m", ScriptedConfig(max_loras=max_loras)), state="ready")
        for i in range(n)
    ]


def test_round_robin_takes_turns() -> None:
    pool = backends(3)
    policy = RoundRobin()
    assert [policy.choose(pool, RouteKey()).name for _ in range(6)] == ["b0", "b1", "b2"] * 2


def test_least_outstanding_prefers_the_idle_backend() -> None:
    a, b = backends(2)
    a.in_flight = 5
    policy = LeastOutstanding()
    assert {policy.choose([a, b], RouteKey()).name for _ in range(20)} == {"b1"}


def test_adapter_affinity_keeps_an_adapter_where_it_runs() -> None:
    pool = backends(2)
    policy = AdapterAffinity(load_factor=1.25)
    placements: dict[str, Counter[str]] = {a: Counter() for a in ("x", "y")}
    for i in range(40):
        adapter = "x" if i % 2 else "y"
        backend = policy.choose(pool, RouteKey(adapter))
        backend.begin(adapter)
        placements[adapter][backend.name] += 1
        if i % 3 == 0:  # some requests finish
            backend.end(adapter, None)
    # Each adapter mostly stays on one replica, and the two use different ones.
    homes = {a: c.most_common(1)[0] for a, c in placements.items()}
    assert homes["x"][0] != homes["y"][0]
    assert all(count >= 15 for _, count in homes.values())


def test_adapter_affinity_is_bounded() -> None:
    """One hot adapter spills onto the other replica instead of piling up."""
    pool = backends(2)
    policy = AdapterAffinity(load_factor=1.25)
    for _ in range(20):
        policy.choose(pool, RouteKey("hot")).begin("hot")
    assert max(b.in_flight for b in pool) <= 13  # ceil(1.25 * 20 / 2)


def test_adapter_affinity_prefers_recent_residents() -> None:
    a, b = backends(2)
    b.begin("x")
    b.end("x", None)  # no longer in flight, but resident in b's LoRA slot
    assert AdapterAffinity().choose([a, b], RouteKey("x")) is b


def test_prefix_affinity_is_sticky_and_spreads() -> None:
    pool = backends(3)
    policy = PrefixAffinity(load_factor=10)
    homes = {p: policy.choose(pool, RouteKey(prefix=p)).name for p in map(str, range(60))}
    assert all(policy.choose(pool, RouteKey(prefix=p)).name == h for p, h in homes.items())
    assert len(set(homes.values())) == 3
    # Removing a backend only moves the prefixes that lived on it (consistent hashing).
    moved = [
        p
        for p, h in homes.items()
        if h != "b2" and policy.choose(pool[:2], RouteKey(prefix=p)).name != h
    ]
    assert moved == []


def test_breaker_ejects_backs_off_and_recovers() -> None:
    breaker = Breaker(threshold=2, base_s=10, max_s=25)
    breaker.failed(0)
    assert breaker.state(0) == "closed"
    breaker.failed(1)
    assert breaker.state(1) == "open"
    assert not breaker.allows(5)
    assert breaker.state(11) == "half_open"
    assert breaker.allows(11)
    breaker.leased(11)
    assert not breaker.allows(11)  # one trial at a time
    breaker.failed(12)  # the trial failed: twice as long
    assert breaker.state(31) == "open"
    assert breaker.state(32) == "half_open"
    breaker.failed(33)
    assert breaker.open_until == 33 + 25  # capped
    breaker.succeeded()
    assert breaker.state(34) == "closed"
    assert breaker.ejections == 0


def test_connect_failures_eject_at_once() -> None:
    breaker = Breaker(threshold=5)
    breaker.failed(0, at_once=True)
    assert breaker.state(0) == "open"


def test_a_passing_health_check_ends_an_ejection_with_a_trial() -> None:
    """The ejection grows while the backend fails; once its probes pass, one trial
    request decides at once, instead of the rest of a doubled ejection."""
    breaker = Breaker(threshold=1, base_s=2, max_s=60)
    for now in (0, 2, 6):  # ejected for 2, then 4, then 8 s
        breaker.failed(now)
    assert breaker.state(13) == "open"
    assert not Breaker().probe_passed(13)  # closed: nothing to end
    assert breaker.probe_passed(7)
    assert breaker.state(7) == "half_open"
    assert breaker.allows(7)
    breaker.leased(7)
    assert not breaker.probe_passed(8)  # the trial is under way
    breaker.failed(8)  # still failing: ejected again, for longer
    assert breaker.open_until == 8 + 16
    breaker.succeeded()
    assert breaker.state(9) == "closed"


def half_open() -> Backend:
    """A backend whose ejection has just ended: one trial request may go."""
    (backend,) = backends(1)
    backend.breaker.failed(time.monotonic(), at_once=True)
    backend.breaker.open_until = time.monotonic()
    assert backend.breaker.state(time.monotonic()) == "half_open"
    return backend


@pytest.mark.parametrize(
    "ending",
    [
        InvalidGenerationRequest("the client's mistake"),
        asyncio.CancelledError(),  # the client left
        EngineOverloaded("429"),
        GenerationFailed("broke while generating"),
    ],
    ids=["400", "disconnect", "429", "generation-failed"],
)
def test_a_trial_that_ends_without_a_verdict_frees_the_slot(ending: BaseException) -> None:
    backend = half_open()
    backend.begin(None)  # the trial
    assert not backend.routable(time.monotonic())  # one at a time
    backend.end(None, ending)
    assert backend.routable(time.monotonic())  # the next request may try
    assert backend.breaker.state(time.monotonic()) == "half_open"


def test_a_trial_that_fails_or_succeeds_decides() -> None:
    failing = half_open()
    failing.begin(None)
    failing.end(None, EngineUnavailable("down"))
    assert failing.breaker.state(time.monotonic()) == "open"
    passing = half_open()
    passing.begin(None)
    passing.end(None, None)
    assert passing.breaker.state(time.monotonic()) == "closed"


async def test_panic_routing_when_every_circuit_is_open() -> None:
    """Ejection steers traffic to the other backends; with none left, the healthy
    ones are tried anyway rather than refusing everything. Unhealthy ones never are."""
    a, b = backends(2)
    pool = Pool("m", [a, b], BalancerSettings())
    now = time.monotonic()
    for backend in (a, b):
        backend.breaker.failed(now, at_once=True)
        assert not backend.routable(now)
    chosen = await pool.acquire(RouteKey())
    assert chosen in (a, b)
    pool.release(chosen, None, None)
    a.healthy = b.healthy = False
    with pytest.raises(NoBackend):
        await pool.acquire(RouteKey())


def test_the_retry_budget_bounds_retries_in_flight_not_over_time() -> None:
    """Envoy's retry budget: a quiet pool always has three retries; a busy one may
    have `retry_budget` of its requests in flight retrying at once, no more."""
    a, b = backends(2)
    pool = Pool("m", [a, b], BalancerSettings(retry_budget=0.2, max_attempts=3))
    timeout = EngineTimedOut("timed out")
    assert not pool.may_retry(2, timeout, a)  # max_attempts
    with pool.attempt(retry=True), pool.attempt(retry=True):
        assert pool.may_retry(0, timeout, a)
        with pool.attempt(retry=True):
            assert not pool.may_retry(0, timeout, a)  # three retrying already
            a.in_flight = b.in_flight = 10
            assert pool.may_retry(0, timeout, a)  # 20 % of 20 in flight: four
            with pool.attempt(retry=True):
                assert not pool.may_retry(0, timeout, a)
                assert not pool.may_retry(0, EngineOverloaded("429"), a)
                # A backend's own failure is no load: its requests still retry.
                for own in (EngineUnavailable("500"), GenerationFailed("broke")):
                    assert pool.may_retry(0, own, a)
                    assert not pool.may_retry(2, own, a)  # max_attempts
                a.healthy = False  # and one its probes found down
                assert pool.may_retry(0, timeout, a)
    a.in_flight = b.in_flight = 0
    assert pool.may_retry(0, timeout, a)  # each attempt gave its slot back


async def test_a_retry_that_tried_every_backend_may_go_back_to_one() -> None:
    """Another backend first; when every one has been tried, a tried one again (the
    fault that failed the first attempt may be over)."""
    a, b = backends(2)
    pool = Pool("m", [a, b], BalancerSettings())
    assert await pool.acquire(RouteKey(), exclude=[a]) is b
    pool.release(b, None, None)
    assert await pool.acquire(RouteKey(), exclude=[a, b]) in (a, b)


async def test_a_resume_waits_for_a_backend_it_has_not_tried() -> None:
    """A resume (`others`) does not go back to the backend that just cut its stream
    while another may come back: it waits for that one, its caller bounding the wait.
    With every backend tried, a tried one again, as a retry."""
    a, b = backends(2)
    pool = Pool("m", [a, b], BalancerSettings())
    b.healthy = False
    waiting = asyncio.create_task(pool.acquire(RouteKey(), exclude=[a], others=True))
    await asyncio.sleep(3 * POLL_S)
    assert not waiting.done()  # `a` is routable, yet not taken
    b.healthy = True
    assert await asyncio.wait_for(waiting, timeout=10) is b
    pool.release(b, None, None)
    assert await pool.acquire(RouteKey(), exclude=[a, b], others=True) in (a, b)


async def test_a_retry_that_tried_every_backend_goes_back_to_the_earlier_one() -> None:
    """Chaos seed 1811: r0 answered 500s (a fault since over, its circuit open), then
    r1, tried again as the only routable one, hung up (killed). The last attempt goes
    to r0, open circuit and all, not back to r1."""
    r0, r1 = backends(2)
    pool = Pool("m", [r0, r1], BalancerSettings(max_attempts=4))
    for _ in range(3):
        r0.begin(None)
        r0.end(None, EngineUnavailable("500"))
    r1.begin(None)
    r1.end(None, EngineUnavailable("500"))
    assert not r0.routable(time.monotonic())
    assert r1.routable(time.monotonic())
    # Routable first: ejection steers retries, even back to the one that failed last.
    assert await pool.acquire(RouteKey(), exclude=[r0, r1]) is r1
    pool.release(r1, None, EngineDisconnected("the connection broke: Server disconnected"))
    assert not r1.routable(time.monotonic())  # a hang-up ejects at once
    assert await pool.acquire(RouteKey(), exclude=[r0, r1, r1]) is r0
