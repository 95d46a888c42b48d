"""A shared store (Redis) that failed is left alone for a while: the response cache,
the rate limiter and the response store each keep one of these, so a dead or stalled
Redis costs one timeout every `retry_after_s`, not one per request."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(slots=True)
class Backoff:
    retry_after_s: float
    _until: float = 0.0

    def up(self) -> bool:
        """Whether the store may be tried now."""
        return time.monotonic() >= self._until

    def failed(self) -> None:
        self._until = time.monotonic() + self.retry_after_s
