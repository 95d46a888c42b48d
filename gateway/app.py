"""`create_app(settings)`: the lifespan, the middleware order, the routes, the errors.

Middleware, outermost first:  request id → (CORS, if configured) → auth → body limit
→ routes.
Engines start in the background after the server is up: `/health` answers at once,
`/ready` and generation routes answer 503 until the engines are loaded. Engines that
share a model id form one pool behind the balancer (gateway/balancer/).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from engines.base import Engine
from engines.errors import EngineError
from engines.registry import build_engine
from gateway.adapter_files import Artifact, identities
from gateway.adapter_ledger import Ledger, LedgerUnavailable, open_ledger
from gateway.adapters import AdapterHost
from gateway.auth.keys import KeyRing
from gateway.auth.limits import InFlight, build_limiter
from gateway.balancer.backend import Backend, Breaker
from gateway.balancer.errors import BalancerError
from gateway.balancer.pool import Pool
from gateway.cache.responses import ResponseCache
from gateway.catalog import Catalog, Model
from gateway.errors import (
    GatewayError,
    HTTPStatusError,
    MethodNotAllowed,
    NotFound,
    as_gateway_error,
    for_caller,
    internal_error,
    invalid_body,
)
from gateway.metrics import Metrics
from gateway.middleware.auth import AuthMiddleware
from gateway.middleware.body_limit import BodyLimitMiddleware
from gateway.middleware.request_id import RequestIdMiddleware
from gateway.responses.store import build_store
from gateway.routes import (
    adapters,
    chat,
    completions,
    embeddings,
    health,
    metrics,
    models,
    responses,
    tokenize,
)
from gateway.routes._respond import components
from gateway.settings import Settings
from gateway.state import Shared

log = logging.getLogger("switchyard")


def create_app(
    settings: Settings,
    engines: Sequence[Engine] | None = None,
    in_flight: InFlight | None = None,
    ledger: Ledger | None = None,
) -> FastAPI:
    """Build the app. Engines passed in are used as they are and stay owned by the
    caller (tests share one across apps); otherwise they are built from `settings`,
    started in the background and closed on shutdown. `in_flight` counts each key's
    requests in flight: this process's own unless given (the workers of one serve
    share theirs: gateway/workers/). The adapter registry agrees with other
    processes through `ledger`, or the one `settings.adapter_registry` names
    (gateway/adapter_ledger.py), following it each probe interval; the app owns it."""
    owned = engines is None
    if engines is None:
        engines = [build_engine(e.kind, e.name, e.model_id, e.options) for e in settings.engines]
    catalog = Catalog(_models(engines, settings), settings.balancer)
    cache = ResponseCache.from_settings(settings.cache)
    store = build_store(settings.responses)
    auth = settings.auth
    keys = KeyRing(auth) if auth.enabled else None
    limiter = build_limiter(auth.rate_limit) if auth.enabled else None
    ledger = ledger or open_ledger(settings)
    if ledger is not None:
        catalog.adapters.share(ledger, catalog.host)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_run_engines, catalog, settings)
            if ledger is not None:
                tg.start_soon(_follow, catalog, settings.balancer.probe_interval_s)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
                if ledger is not None:
                    await _leave(ledger)
                await cache.aclose()
                if store is not None:
                    await store.aclose()
                if limiter is not None:
                    await limiter.aclose()
                if owned:
                    await catalog.aclose()

    app = FastAPI(
        title="Switchyard",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.shared = Shared(
        settings=settings,
        catalog=catalog,
        cache=cache,
        responses=store,
        limiter=limiter,
        in_flight=in_flight or InFlight(),
        metrics=Metrics(catalog, cache, limiter, keys) if settings.metrics else None,
        started_at=int(time.time()),
    )

    routes = (chat, completions, responses, embeddings, tokenize, models, adapters, health, metrics)
    for module in routes:
        app.include_router(module.router)
    _document_bodies(app)

    for known in (GatewayError, EngineError, BalancerError):
        app.add_exception_handler(known, _known_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)

    # Added innermost first: Starlette wraps each new middleware around the previous.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    open_paths = {"/health", "/ready", "/openapi.json"}
    open_paths |= {"/metrics"} if auth.public_metrics else set()
    app.add_middleware(AuthMiddleware, keys=keys, open_paths=frozenset(open_paths))
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Cache-Control", "X-Request-Id"],
        )
    app.add_middleware(RequestIdMiddleware)
    return app


def _document_bodies(app: FastAPI) -> None:
    """Add the request body schemas routes declare with `documented` to /openapi.json."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = components(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _models(engines: Sequence[Engine], settings: Settings) -> list[Model]:
    """Engines grouped into one pool per model id, with their settings (matched by
    engine name, if configured): limits, adapter roots, start-up adapters."""
    configs = {e.name: e for e in settings.engines}
    balancer = settings.balancer
    groups: dict[str, list[Engine]] = {}
    for engine in engines:
        groups.setdefault(engine.model_id, []).append(engine)
    models = []
    for model_id, group in groups.items():
        backends = []
        names: set[str] = set()
        root: Path | None = None
        artifact: Artifact | None = None
        startup: dict[str, Path] = {}
        for engine in group:
            config = configs.get(engine.name)
            breaker = Breaker(balancer.eject_after, balancer.ejection_s, balancer.max_ejection_s)
            backends.append(Backend(engine, config.max_in_flight if config else None, breaker))
            names |= identities(model_id, engine.weights)
            artifact = artifact or (Artifact.read(engine.weights) if engine.weights else None)
            if config is None:
                continue
            names |= set(config.base_names)
            root = root or config.adapter_root
            for adapter in config.adapters:
                startup.setdefault(adapter.name, adapter.path)
        pool = Pool(model_id, backends, balancer)
        host = AdapterHost(pool, frozenset(names | {model_id}), root, artifact)
        models.append(Model(host, list(startup.items())))
    return models


_CHAT_EXAMPLE = (
    '{"model": "MODEL", "messages": [{"role": "user", "content": '
    '"What is the capital of France?"}]}'
)
_EMBED_EXAMPLE = ("/v1/embeddings", '{"model": "MODEL", "input": ["The sky is blue."]}')


async def _run_engines(catalog: Catalog, settings: Settings) -> None:
    """Start every engine, say how to call each model that is ready, then probe the
    backends until shut-down."""
    await catalog.start_all()
    freeze_heap()
    for model in catalog.models:
        if model.pool.state() != "ready":
            continue
        generates = all("generate" in b.engine.serves for b in model.pool.backends)
        path, body = ("/v1/chat/completions", _CHAT_EXAMPLE) if generates else _EMBED_EXAMPLE
        log.info(
            "ready: curl http://%s:%d%s -H 'Content-Type: application/json' -d '%s'",
            settings.host,
            settings.port,
            path,
            body.replace("MODEL", model.id),
        )
    await catalog.prober.run()


async def _follow(catalog: Catalog, interval_s: float) -> None:
    """Follow the adapter ledger each `interval_s`, once no engine is still starting."""
    while True:
        await anyio.sleep(interval_s)
        if any(model.pool.state() == "loading" for model in catalog.models):
            continue
        try:
            await catalog.adapters.follow()
        except LedgerUnavailable as exc:
            log.warning("adapters not followed: %s", exc.message)
        except Exception:
            log.exception("following the adapter ledger failed; trying again")


async def _leave(ledger: Ledger) -> None:
    """This process leaves the ledger: it holds nothing from now on."""
    with anyio.CancelScope(shield=True):
        try:
            await ledger.aclose()
        except LedgerUnavailable as exc:
            log.warning("left the adapter ledger without saying so: %s", exc.message)


def freeze_heap() -> None:
    """Move what start-up made (modules, engines, the model's tables) out of the
    garbage collector's sight, as vLLM's server does: each full collection would
    otherwise walk it all again, a pause every request in flight waits out. No
    collection first: requests are already being served, and in a big process one
    full collection is such a pause itself.

    And collect the young generation every `GC_YOUNG` allocations (net of frees), not
    every 700: a request leaves no cyclic garbage (see `Hangup`, `SendWatch`), so a
    collection only walks the young objects still alive, most of what the requests in
    flight hold, and its cost grew with concurrency. Measured through the gateway in
    front of a fast upstream (gc.callbacks, 6000 answers): 22-29 -> 0 µs of
    collection per request at concurrency 4, 108-116 -> 1-60 µs at 64; at concurrency
    1 the young generation stays below either threshold."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])


GC_YOUNG = 10_000


async def _known_error(request: Request, exc: Exception) -> Response:
    error = as_gateway_error(exc)
    assert error is not None
    return _for_caller(request, error).response()


def _for_caller(request: Request, error: GatewayError) -> GatewayError:
    principal = getattr(request.state, "principal", None)
    admin = principal is not None and principal.admin
    return for_caller(error, getattr(request.state, "request_id", None), admin)


async def _validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's 422 never leaks: the first problem becomes a 400 naming the field."""
    assert isinstance(exc, RequestValidationError)
    return invalid_body(exc.errors()).response()


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return NotFound(f"No route {request.method} {request.url.path}.").response()
    if exc.status_code == 405:
        refusal = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}.")
        return refusal.response()
    return HTTPStatusError(str(exc.detail), exc.status_code).response()


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    rid = getattr(request.state, "request_id", None)
    log.error("unhandled error in request %s", rid, exc_info=exc)
    return internal_error(rid).response()
