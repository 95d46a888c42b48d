"""Active health checks: every `probe_interval_s`, each started backend's `health()`
with a `probe_timeout_s` deadline. `unhealthy_after` failures in a row take it out
of rotation; `healthy_after` successes bring it back, after `on_recover` has run
(which puts the registry's adapters back on a replica that may have restarted
empty) and with its circuit breaker reset.

A replica that restarts faster than `unhealthy_after` probes is never seen failing,
so `on_recover` also runs for a healthy backend whose engine reports a new instance
(`Health.instance`: it restarted) or on which a request found an adapter gone
(`Backend.lost_adapters`); its breaker keeps its own course. A restore that fails is
tried again at the next probe."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from engines.types import Health
from gateway.balancer.backend import Backend
from gateway.balancer.pool import Pool
from gateway.settings import BalancerSettings

log = logging.getLogger("switchyard")

Recover = Callable[[Pool, Backend], Awaitable[None]]


@dataclass(slots=True)
class _Streak:
    ok: int = 0
    failed: int = 0
    instance: str = ""  # the engine's instance when it was last seen whole


@dataclass(slots=True)
class Prober:
    pools: list[Pool]
    settings: BalancerSettings
    on_recover: Recover
    _streaks: dict[int, _Streak] = field(default_factory=dict)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.probe_interval_s)
            await self.probe_all()

    async def probe_all(self) -> None:
        checks = [self.probe(pool, backend) for pool in self.pools for backend in pool.backends]
        await asyncio.gather(*checks)

    async def probe(self, pool: Pool, backend: Backend, *, first: bool = False) -> None:
        """One check; `first` (right after start) sets the health without thresholds."""
        if backend.state != "ready":
            return
        health = await self._check(backend)
        streak = self._streaks.setdefault(id(backend), _Streak())
        if first:
            backend.healthy, backend.error = health.ok, "" if health.ok else health.detail
            streak.instance = health.instance
            if not health.ok:
                log.warning("backend %s does not answer yet: %s", backend.name, health.detail)
            return
        if health.ok:
            streak.ok, streak.failed = streak.ok + 1, 0
            if not backend.healthy and streak.ok >= self.settings.healthy_after:
                await self._recover(pool, backend, health)
            elif backend.healthy and (backend.lost_adapters or health.instance != streak.instance):
                await self._restore(pool, backend, health, "had lost its adapters: restored")
            elif backend.healthy and backend.breaker.probe_passed(time.monotonic()):
                pool.wake()  # a trial request may go to it now
        else:
            backend.probe_failures += 1
            streak.ok, streak.failed = 0, streak.failed + 1
            if backend.healthy and streak.failed >= self.settings.unhealthy_after:
                backend.healthy = False
                backend.error = health.detail
                log.warning("backend %s is unhealthy: %s", backend.name, health.detail)

    async def _recover(self, pool: Pool, backend: Backend, health: Health) -> None:
        if await self._restore(pool, backend, health, "is healthy again"):
            backend.healthy = True
            backend.error = ""
            backend.breaker.reset()
            pool.wake(everyone=True)

    async def _restore(self, pool: Pool, backend: Backend, health: Health, done: str) -> bool:
        """`on_recover`; whether it went through (the backend is whole again)."""
        try:
            await self.on_recover(pool, backend)
        except Exception as exc:
            log.warning("backend %s answers but could not be restored: %s", backend.name, exc)
            return False
        self._streaks[id(backend)].instance = health.instance
        backend.lost_adapters = False
        log.info("backend %s %s", backend.name, done)
        return True

    async def _check(self, backend: Backend) -> Health:
        try:
            async with asyncio.timeout(self.settings.probe_timeout_s):
                return await backend.engine.health()
        except TimeoutError:
            detail = f"no health answer within {self.settings.probe_timeout_s:g} s"
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
        return Health(ok=False, detail=detail)
