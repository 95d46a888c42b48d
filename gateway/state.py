"""What the routes share, built once by `create_app` and typed in one place.

Routes read it with `shared(request)`, and the caller's identity with
`principal(request)` (set by gateway/middleware/auth.py), instead of re-annotating
`request.app.state.*` each time.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from gateway.auth.keys import Principal
from gateway.auth.limits import InFlight, Limiter
from gateway.cache.responses import ResponseCache
from gateway.catalog import Catalog
from gateway.metrics import Metrics
from gateway.responses.store import ResponseStore
from gateway.settings import Settings


@dataclass(frozen=True, slots=True)
class Shared:
    settings: Settings
    catalog: Catalog
    cache: ResponseCache
    responses: ResponseStore | None  # the Responses API's store; None when it is off
    limiter: Limiter | None  # None without auth
    in_flight: InFlight
    metrics: Metrics | None  # None with metrics off
    started_at: int  # unix time, the `created` of every served model


def shared(request: Request) -> Shared:
    state: Shared = request.app.state.shared
    return state


def principal(request: Request) -> Principal:
    """Who calls: the key's principal (ANONYMOUS without auth or on open paths)."""
    who: Principal = request.state.principal
    return who


def caller(request: Request) -> Principal | None:
    """`principal`, on an open path (/health, /ready, /metrics), where a request
    without a valid key has none."""
    who: Principal | None = request.state.principal
    return who
