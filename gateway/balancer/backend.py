"""One backend (an engine) inside a pool, with what the balancer knows about it:
its start-up state, active health, circuit breaker, in-flight load, the adapters it
served last (the gateway's own view of which adapters are resident there) and whether
a request found one of its adapters gone (`lost_adapters`: the prober restores them)."""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from engines.base import Engine
from engines.errors import (
    AdapterMissing,
    EngineDisconnected,
    EngineOverloaded,
    EngineUnavailable,
    EngineUnreachable,
)

State = Literal["loading", "ready", "failed"]
BreakerState = Literal["closed", "open", "half_open"]


@dataclass(slots=True)
class Breaker:
    """Passive ejection (outlier detection), per backend.

    `threshold` consecutive failures, or one that says the backend is gone (it
    refused a connection or hung up on one), open it for `base_s * 2**(ejections - 1)`
    seconds (at most `max_s`). Then it is half-open:
    one trial request at a time; success closes it and forgets past ejections, failure
    opens it again for twice as long, and a trial that ends without a verdict on the
    backend (`blames_backend`) frees the slot for the next one. A health check that
    passes while it is open makes it half-open at once (as Envoy's
    `successful_active_health_check_uneject_host`, but by a trial rather than
    closed): a backend that recovered is back within a probe interval, not after an
    ejection that doubled while it was failing."""

    threshold: int = 3
    base_s: float = 5.0
    max_s: float = 60.0
    failures: int = 0
    ejections: int = 0
    open_until: float = 0.0
    trial: bool = False

    def state(self, now: float) -> BreakerState:
        if not self.open_until:
            return "closed"
        return "open" if now < self.open_until else "half_open"

    def allows(self, now: float) -> bool:
        state = self.state(now)
        return state == "closed" or (state == "half_open" and not self.trial)

    def leased(self, now: float) -> None:
        if self.state(now) == "half_open":
            self.trial = True

    def succeeded(self) -> None:
        self.reset()

    def released(self) -> None:
        self.trial = False

    def failed(self, now: float, *, at_once: bool = False) -> None:
        state = self.state(now)
        if state == "open":
            return  # requests sent before the ejection are still failing
        self.failures += 1
        if at_once or state == "half_open" or self.failures >= self.threshold:
            self.ejections += 1
            self.open_until = now + min(self.base_s * 2 ** (self.ejections - 1), self.max_s)
            self.trial = False

    def probe_passed(self, now: float) -> bool:
        """A health check passed; whether that ended an ejection (half-open now)."""
        if self.state(now) != "open":
            return False
        self.open_until = now
        return True

    def reset(self) -> None:
        self.failures = self.ejections = 0
        self.open_until = 0.0
        self.trial = False


@dataclass(eq=False, slots=True)
class Backend:
    engine: Engine
    max_in_flight: int | None = None
    breaker: Breaker = field(default_factory=Breaker)
    state: State = "loading"
    error: str = ""
    healthy: bool = True
    in_flight: int = 0
    probe_failures: int = 0
    lost_adapters: bool = False
    by_adapter: Counter[str] = field(default_factory=Counter)
    recent: OrderedDict[str, None] = field(default_factory=OrderedDict)

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def slots(self) -> int:
        """How many adapters the engine keeps ready at once (vLLM's max_loras)."""
        support = self.engine.adapter_support
        return support.max_loaded if support else 0

    @property
    def serving(self) -> bool:
        """Started, and answering its health checks (its breaker aside)."""
        return self.state == "ready" and self.healthy

    def routable(self, now: float) -> bool:
        return self.serving and self.breaker.allows(now)

    def has_room(self) -> bool:
        return self.max_in_flight is None or self.in_flight < self.max_in_flight

    def resident(self, adapter: str) -> bool:
        return self.by_adapter[adapter] > 0 or adapter in self.recent

    def begin(self, adapter: str | None) -> None:
        self.in_flight += 1
        self.breaker.leased(time.monotonic())
        if adapter is not None:
            self.by_adapter[adapter] += 1
            self.recent[adapter] = None
            self.recent.move_to_end(adapter)
            while len(self.recent) > self.slots:
                self.recent.popitem(last=False)

    def end(self, adapter: str | None, failure: BaseException | None) -> None:
        self.in_flight -= 1
        if adapter is not None:
            self.by_adapter[adapter] -= 1
            if not self.by_adapter[adapter]:
                del self.by_adapter[adapter]
        if failure is None:
            self.breaker.succeeded()
        elif blames_backend(failure):
            at_once = isinstance(failure, EngineUnreachable | EngineDisconnected)
            self.breaker.failed(time.monotonic(), at_once=at_once)
        else:
            self.breaker.released()
        if isinstance(failure, AdapterMissing):
            self.lost_adapters = True

    def describe(self, now: float) -> dict[str, object]:
        return {
            "name": self.name,
            "state": self.state,
            "healthy": self.healthy,
            "circuit": self.breaker.state(now),
            "routable": self.routable(now),
            "in_flight": self.in_flight,
            **({"error": self.error} if self.error else {}),
        }


def blames_backend(failure: BaseException) -> bool:
    """Whether a request's failure is a verdict on its backend: down, timed out or
    broken (EngineUnavailable). Not one: the client's own mistake (400) or departure
    (cancellation); a 429 (the backend is up, only busy); an adapter it lost by
    restarting (AdapterMissing: it is back, and gets its adapters again); a generation
    that broke once running (GenerationFailed: the backend took the request and
    answered, and the cause may be that request alone; a backend broken for every
    request fails with EngineUnavailable, and its probes)."""
    passes = EngineOverloaded | AdapterMissing
    return isinstance(failure, EngineUnavailable) and not isinstance(failure, passes)
