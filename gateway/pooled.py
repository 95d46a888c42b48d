"""Requests answered whole by one engine call that are not generations (embeddings,
tokenize, detokenize): one JSON body in, one JSON answer out, on one backend of the
model's pool, under the balancer's rules.

    resolve the model (an adapter names its base's pool; gateway/catalog.py)
    → the pool must serve the task: a 400 naming the model otherwise (`serving`)
    → pool.acquire (policy, wait queue, 429) → the engine's operation
    → pool.release (the backend's breaker told how it went)

A backend failing (down, timed out, 5xx, 429, or broken while at it; `retryable`) is
retried on another backend of the pool within `max_attempts` and the pool's retry
budget, as generations are (gateway/attempts.py). An adapter's request is counted on its
version while it runs, so unloading the adapter drains it.

Nothing here knows about FastAPI: the routes hand in plain data.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from engines.base import Embedder, Engine, Tokenizer
from engines.errors import InvalidGenerationRequest, UnsupportedEndpoint
from engines.options import blame_body_field
from engines.tasks import API_NAMES, require
from engines.types import Adapter, Task
from gateway.attempts import Attempts, acquire
from gateway.balancer.policies import RouteKey
from gateway.call import Outcome
from gateway.catalog import Route

log = logging.getLogger("switchyard")

Operation = Callable[[Engine, Adapter | None], Awaitable[dict[str, Any]]]


def serving(route: Route, task: Task, endpoint: str) -> None:
    """Raise UnsupportedEndpoint (400, naming the model) unless every backend of the
    route's pool serves `task`; `endpoint` names the API asked for ("embeddings")."""
    backends = route.pool.backends
    serves = frozenset.intersection(*(b.engine.serves for b in backends)) if backends else None
    require(route.pool.model_id, serves or frozenset(), task, endpoint)


async def call(
    route: Route,
    operation: Operation,
    outcome: Outcome,
    need: tuple[Task, str] | None = None,
) -> dict[str, Any]:
    """`operation` on one backend of the route's pool, retried elsewhere while its
    failure is `retryable`; `outcome` says where it ran. `need` is the task the
    pool must serve and the endpoint asking for it (`serving`)."""
    pool = route.pool
    record = route.adapter
    adapter = record.adapter if record is not None else None
    outcome.model = pool.model_id
    outcome.adapter = adapter.name if adapter is not None else None
    if need is not None:
        serving(route, *need)
    key = RouteKey(outcome.adapter)
    placed = record.placed if record is not None else None
    attempts = Attempts(pool)
    if record is not None:
        record.acquire()
    try:
        while True:
            with pool.attempt(retry=bool(attempts.tried)):
                backend = await acquire(pool, key, attempts, placed, outcome)
                failure: BaseException | None = None
                try:
                    return await operation(backend.engine, adapter)
                except BaseException as exc:
                    failure = exc
                    if not attempts.again(backend, exc):
                        raise attempts.verdict(exc) from None
                finally:
                    pool.release(backend, key.adapter, failure)
    finally:
        if record is not None:
            record.release()


def embed(body: dict[str, Any]) -> Operation:
    """`POST /v1/embeddings` on an engine that can embed."""

    async def run(engine: Engine, adapter: Adapter | None) -> dict[str, Any]:
        if not isinstance(engine, Embedder):
            raise _incapable(engine, "embeddings")
        return await _blaming(engine.embed(body, adapter), body)

    return run


def tokenize(body: dict[str, Any]) -> Operation:
    async def run(engine: Engine, adapter: Adapter | None) -> dict[str, Any]:
        if not isinstance(engine, Tokenizer):
            raise _incapable(engine, "tokenize")
        return await _blaming(engine.tokenize(body, adapter), body)

    return run


def detokenize(body: dict[str, Any]) -> Operation:
    async def run(engine: Engine, adapter: Adapter | None) -> dict[str, Any]:
        if not isinstance(engine, Tokenizer):
            raise _incapable(engine, "detokenize")
        return await _blaming(engine.detokenize(body, adapter), body)

    return run


async def _blaming(work: Awaitable[dict[str, Any]], body: dict[str, Any]) -> dict[str, Any]:
    """The engine's answer; a refusal that names no field names the one it speaks of."""
    try:
        return await work
    except InvalidGenerationRequest as exc:
        blame_body_field(exc, body)
        raise


def _incapable(engine: Engine, endpoint: str) -> UnsupportedEndpoint:
    kind = type(engine).__name__
    return UnsupportedEndpoint(
        engine.model_id, API_NAMES[endpoint], f"its engine ({kind}) has no such operation"
    )
