"""One request's attempts on a pool: which backends it tried, how each failed, and
whether it may go on to another (generations: gateway/pipeline.py; whole answers
that are not generations: gateway/pooled.py).

A failure before anything reached the client may go to another backend (`retryable`):
the backend was down, timed out, answered 5xx or 429 (EngineUnavailable), or broke
while generating (GenerationFailed: the engine's fault, not the client's). The
client's own mistake (400) or departure never does. Retries are bounded by
`max_attempts` and the pool's retry budget (gateway/balancer/pool.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TypeGuard

from engines.errors import EngineUnavailable, GenerationFailed
from gateway.balancer.backend import Backend
from gateway.balancer.errors import NoBackend
from gateway.balancer.policies import RouteKey
from gateway.balancer.pool import Pool
from gateway.call import Outcome

log = logging.getLogger("switchyard")


def retryable(failure: BaseException) -> TypeGuard[EngineUnavailable | GenerationFailed]:
    """Whether a failure before anything reached the client may go to another backend."""
    return isinstance(failure, EngineUnavailable | GenerationFailed)


@dataclass
class Attempts:
    pool: Pool
    tried: list[Backend] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # "backend: why", in order
    last: EngineUnavailable | GenerationFailed | None = None
    spent: bool = False  # the pool's retry budget refused a retry

    def again(self, backend: Backend, failure: BaseException) -> bool:
        """Whether the request, `failure` on `backend` before any output, gets another
        attempt."""
        if not retryable(failure):
            return False
        self.failures.append(f"{backend.name}: {failure}")
        if not self.pool.may_retry(len(self.tried), failure, backend):
            self.spent = len(self.failures) < self.pool.settings.max_attempts
            return False
        log.warning("backend %s failed (%s); retrying elsewhere", backend.name, failure)
        self.last = failure
        self.tried.append(backend)
        return True

    def verdict(self, failure: BaseException) -> BaseException:
        """What the request ends on: `failure`, or after several attempts the same
        kind of error saying how each went."""
        if not retryable(failure) or (len(self.failures) < 2 and not self.spent):
            return failure
        why = "; ".join(self.failures)
        if self.spent:
            why += " (no retry: the pool's retry budget is spent, too many requests retrying)"
        return type(failure)(f"{len(self.failures)} attempt(s) failed: {why}")


async def acquire(
    pool: Pool,
    key: RouteKey,
    attempts: Attempts,
    placed: Collection[str] | None,
    outcome: Outcome,
    others: bool = False,
) -> Backend:
    """A backend of `pool` for the next attempt (`others`: see Pool.acquire), its wait
    and the attempt counted in `outcome`; when none is left after a failure, the
    attempts' verdict is raised."""
    waiting = time.perf_counter()
    try:
        backend = await pool.acquire(key, attempts.tried, placed, others)
    except NoBackend:
        if attempts.last is not None:
            raise attempts.verdict(attempts.last) from None
        raise
    finally:
        outcome.queue_wait_s += time.perf_counter() - waiting
    outcome.backend = backend.name
    outcome.attempts += 1
    return backend
