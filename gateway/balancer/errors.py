"""Why a pool gave no backend; the gateway answers them as HTTP errors
(`gateway.errors.as_gateway_error`), the balancer knows nothing of HTTP.

    BalancerError
    ├── NoBackend   nothing in the pool can serve the request now → 503
    └── PoolFull    every backend at its limit and the wait queue full, or the wait
                    too long → 429 with Retry-After
"""

from __future__ import annotations


class BalancerError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NoBackend(BalancerError):
    """The message names the pool's backends and their states (admins read it)."""


class PoolFull(BalancerError):
    pass
