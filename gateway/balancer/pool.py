"""A pool: the backends serving one model id, its routing policy, its wait queue and
its retry budget.

    acquire(key) → a backend with room, chosen by the policy among routable ones
                   (ready, healthy, circuit not open, not already tried, holding the
                   adapter), or, when every circuit left is open, among the ready
                   and healthy ones anyway (panic routing: ejection steers traffic
                   to other backends, and there are none); a retry that has tried
                   every backend may try them again, the one that failed last only
                   when no other is left; none has room → wait in
                   a bounded FIFO queue (`queue_size`, `queue_timeout_s`); queue
                   full or wait too long → PoolFull; nothing routable →
                   NoBackend (gateway/balancer/errors.py)
    release(...)   → slot freed, the backend's breaker told how it went, a waiter woken

Retries draw on a budget, as Envoy's: at most `retry_budget` times the requests in flight
may be retrying at once (and always at least three), so a pool slowed down by its
load cannot turn every request into `max_attempts` requests, and a quiet pool still
retries. The budget is for failures that may be load: a timeout, a 429. Any other
failure (refused, the connection broke, a 500, garbage, a restart), or any failure on
a backend its health checks already found down, is that backend's own: its requests
always get their retry (its breaker ejects a backend that keeps failing), so a replica
killed, frozen or failing under load loses none of the requests it held.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Collection, Iterator, Sequence
from typing import Literal

from engines.errors import EngineOverloaded, EngineTimedOut
from engines.types import AdapterSupport, GenerationRequest
from gateway.balancer.backend import Backend
from gateway.balancer.errors import NoBackend, PoolFull
from gateway.balancer.policies import RouteKey, make_policy
from gateway.settings import BalancerSettings, PolicyName

MIN_RETRIES = 3  # retries in flight a pool always allows
LOAD = (EngineTimedOut, EngineOverloaded)  # failures whose retries the budget bounds
POLL_S = 0.2  # how often a resume waiting for an untried backend looks again

# ready: something routable | loading: a backend is starting | unavailable: started,
# none routable now (health checks, breakers) | failed: none started
PoolState = Literal["ready", "loading", "unavailable", "failed"]


class Pool:
    def __init__(
        self,
        model_id: str,
        backends: Sequence[Backend],
        settings: BalancerSettings,
        policy: PolicyName | None = None,
    ) -> None:
        self.model_id = model_id
        self.backends = list(backends)
        self.settings = settings
        self.policy_name = policy or settings.policies.get(model_id, settings.policy)
        self.policy = make_policy(self.policy_name, settings.load_factor)
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._retrying = 0  # attempts in flight that are retries

    @property
    def support(self) -> AdapterSupport | None:
        """Adapters every backend can take (None if one takes none)."""
        supports = [b.engine.adapter_support for b in self.backends]
        if not supports or any(s is None for s in supports):
            return None
        known = [s for s in supports if s is not None]
        return AdapterSupport(
            max_rank=min(s.max_rank for s in known),
            max_loaded=min(s.max_loaded for s in known),
            target_modules=frozenset.intersection(*(s.target_modules for s in known)),
        )

    def route_key(self, adapter: str | None, request: GenerationRequest) -> RouteKey:
        if self.policy_name != "prefix_affinity":
            return RouteKey(adapter)
        prompt = request.prompt
        if request.is_chat:
            prompt = "".join(f"{m.role}\0{m.text()}\0" for m in request.messages)
        elif not isinstance(prompt, str):
            prompt = ",".join(map(str, prompt))
        return RouteKey(adapter, prompt[: self.settings.prefix_chars])

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def state(self) -> PoolState:
        now = time.monotonic()
        if any(b.routable(now) for b in self.backends):
            return "ready"
        if any(b.state == "loading" for b in self.backends):
            return "loading"
        if any(b.state == "ready" for b in self.backends):
            return "unavailable"
        return "failed"

    async def acquire(
        self,
        key: RouteKey,
        exclude: Sequence[Backend] = (),
        placed: Collection[str] | None = None,
        others: bool = False,
    ) -> Backend:
        """A backend for `key`, not one in `exclude` (those tried, in order) while
        another is choosable; tried ones again only as a retry's last resort. With
        `others` (a resume: what was tried just cut a stream), wait for an untried one
        while there is any, rather than go back; the caller bounds that wait."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            now = time.monotonic()
            placed_here = [b for b in self.backends if placed is None or b.name in placed]
            untried = [b for b in placed_here if b not in exclude]
            candidates = _choosable(untried, now)
            if not candidates and others and untried:
                await asyncio.sleep(POLL_S)
                continue
            candidates = candidates or _last_resort(placed_here, exclude[-1:], now)
            if not candidates:
                raise self._unavailable(now)
            free = [b for b in candidates if b.has_room()]
            if free:
                backend = self.policy.choose(free, key)
                backend.begin(key.adapter)
                return backend
            if len(self._waiters) >= self.settings.queue_size:
                raise PoolFull(
                    f"Every backend for '{self.model_id}' is at its limit and the wait queue "
                    f"is full ({self.settings.queue_size}); retry shortly."
                )
            if deadline is None:
                deadline = loop.time() + self.settings.queue_timeout_s
            await self._wait(deadline)

    async def _wait(self, deadline: float) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except TimeoutError:
            raise PoolFull(
                f"No backend for '{self.model_id}' had room within "
                f"{self.settings.queue_timeout_s:g} s; retry shortly."
            ) from None
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def release(self, backend: Backend, adapter: str | None, failure: BaseException | None) -> None:
        backend.end(adapter, failure)
        self.wake()

    def wake(self, everyone: bool = False) -> None:
        """Let the longest waiter (or all: a backend came back) look again."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if not everyone:
                    return

    def may_retry(self, retries_so_far: int, failure: BaseException, backend: Backend) -> bool:
        if retries_so_far + 1 >= self.settings.max_attempts:
            return False
        if not isinstance(failure, LOAD) or not backend.serving:
            return True  # that backend's own failure, not the pool's load
        in_flight = sum(b.in_flight for b in self.backends)
        return self._retrying < max(MIN_RETRIES, self.settings.retry_budget * in_flight)

    @contextlib.contextmanager
    def attempt(self, retry: bool) -> Iterator[None]:
        """One attempt at a request, from choosing a backend to releasing it; a retry
        counts against the budget meanwhile."""
        self._retrying += retry
        try:
            yield
        finally:
            self._retrying -= retry

    def _unavailable(self, now: float) -> NoBackend:
        states = ", ".join(
            f"{b.name}: {_why(b, now)}" for b in self.backends if not b.routable(now)
        )
        return NoBackend(
            f"No backend can serve '{self.model_id}' right now ({states or 'all tried'}); "
            "retry shortly."
        )


def _choosable(backends: list[Backend], now: float) -> list[Backend]:
    """The routable ones; or, when every circuit among them is open, the ready and
    healthy ones anyway (panic: breakers alone never refuse every request)."""
    return [b for b in backends if b.routable(now)] or [b for b in backends if b.serving]


def _last_resort(backends: list[Backend], last: Sequence[Backend], now: float) -> list[Backend]:
    """A retry that has tried every backend: the routable ones, else (panic) the
    serving ones; of either, not the one that failed last while another is there (the
    fault that failed an earlier attempt may be over; the last one's may not)."""
    for group in ([b for b in backends if b.routable(now)], [b for b in backends if b.serving]):
        if group:
            return [b for b in group if b not in last] or group
    return []


def _why(backend: Backend, now: float) -> str:
    if backend.state != "ready":
        return backend.state
    if not backend.healthy:
        return "failing health checks"
    return f"ejected ({backend.breaker.state(now)})"
