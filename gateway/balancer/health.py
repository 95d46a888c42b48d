"""Active health checks: every `probe_interval_s`, each started backend's `health()`
with a `probe_timeout_s` deadline. `unhealthy_after` failures in a row take it out
of rotation; `healthy_after` successes bring it back, after `on_recover` has run
(which puts the registry's adapters back on a replica that may have restarted
empty) and with its circuit breaker reset."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.balancer.backend import Backend
from gateway.balancer.pool import Pool
from gateway.settings import BalancerSettings

log = logging.getLogger("switchyard")

Recover = Callable[[Pool, Backend], Awaitable[None]]


@dataclass(slots=True)
class _Streak:
    ok: int = 0
    failed: int = 0


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
        ok, detail = await self._check(backend)
        if first:
            backend.healthy, backend.error = ok, "" if ok else detail
            if not ok:
                log.warning("backend %s does not answer yet: %s", backend.name, detail)
            return
        streak = self._streaks.setdefault(id(backend), _Streak())
        if ok:
            streak.ok, streak.failed = streak.ok + 1, 0
            if not backend.healthy and streak.ok >= self.settings.healthy_after:
                await self._recover(pool, backend)
        else:
            backend.probe_failures += 1
            streak.ok, streak.failed = 0, streak.failed + 1
            if backend.healthy and streak.failed >= self.settings.unhealthy_after:
                backend.healthy = False
                backend.error = detail
                log.warning("backend %s is unhealthy: %s", backend.name, detail)

    async def _recover(self, pool: Pool, backend: Backend) -> None:
        try:
            await self.on_recover(pool, backend)
        except Exception as exc:
            log.warning("backend %s answers but could not be restored: %s", backend.name, exc)
            return
        backend.healthy = True
        backend.error = ""
        backend.breaker.reset()
        log.info("backend %s is healthy again", backend.name)
        pool.wake(everyone=True)

    async def _check(self, backend: Backend) -> tuple[bool, str]:
        try:
            async with asyncio.timeout(self.settings.probe_timeout_s):
                health = await backend.engine.health()
        except TimeoutError:
            return False, f"no health answer within {self.settings.probe_timeout_s:g} s"
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return health.ok, health.detail
