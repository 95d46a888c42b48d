"""`create_app(settings)`: the lifespan, the middleware order, the routes, the errors.

Middleware, outermost first:  request id → (CORS, if configured) → auth → body limit
→ routes.
Engines start in the background after the server is up: `/health` answers at once,
`/ready` and generation routes answer 503 until the engines are loaded. Engines that
share a model id form one pool behind the balancer (gateway/balancer/).
"""

from __future__ import annotations

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
from gateway.adapters import Artifact, Base, identities
from gateway.auth.keys import KeyRing
from gateway.auth.limits import InFlight, build_limiter
from gateway.balancer.backend import Backend, Breaker
from gateway.balancer.pool import Pool
from gateway.cache.responses import ResponseCache
from gateway.engine_set import EngineSet, Model
from gateway.errors import (
    GatewayError,
    MethodNotAllowed,
    NotFound,
    for_caller,
    from_engine_error,
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
from gateway.routes._respond import JSONResponse, openapi_schemas
from gateway.settings import Settings

log = logging.getLogger("switchyard")


def create_app(settings: Settings, engines: Sequence[Engine] | None = None) -> FastAPI:
    """Build the app. Engines passed in are used as they are and stay owned by the
    caller (tests share one across apps); otherwise they are built from `settings`,
    started in the background and closed on shutdown."""
    owned = engines is None
    if engines is None:
        engines = [build_engine(e.kind, e.name, e.model_id, e.options) for e in settings.engines]
    engine_set = EngineSet(_models(engines, settings), settings.balancer)
    cache = ResponseCache.from_settings(settings.cache)
    store = build_store(settings.responses)
    auth = settings.auth
    keys = KeyRing(auth) if auth.enabled else None
    limiter = build_limiter(auth.rate_limit) if auth.enabled else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_run_engines, engine_set, settings)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
                await cache.aclose()
                if store is not None:
                    await store.aclose()
                if limiter is not None:
                    await limiter.aclose()
                if owned:
                    await engine_set.aclose()

    app = FastAPI(
        title="Switchyard",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.settings = settings
    app.state.engines = engine_set
    app.state.cache = cache
    app.state.responses = store
    app.state.limiter = limiter
    app.state.in_flight = InFlight()
    app.state.metrics = Metrics(engine_set, cache, limiter, keys) if settings.metrics else None
    app.state.started_at = int(time.time())

    routes = (chat, completions, responses, embeddings, tokenize, models, adapters, health, metrics)
    for module in routes:
        app.include_router(module.router)
    _document_bodies(app)

    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(EngineError, _engine_error)
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
            schema = build()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(openapi_schemas())
            app.openapi_schema = schema
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
            if config is None:
                continue
            model_path = config.options.get("model")
            names |= identities(model_id, str(model_path) if model_path else None)
            artifact = artifact or (Artifact.read(str(model_path)) if model_path else None)
            names |= set(config.base_names)
            root = root or config.adapter_root
            for adapter in config.adapters:
                startup.setdefault(adapter.name, adapter.path)
        pool = Pool(model_id, backends, balancer)
        base = Base(pool, frozenset(names | {model_id}), root, artifact)
        models.append(Model(base, list(startup.items())))
    return models


_CHAT_EXAMPLE = (
    '{"model": "MODEL", "messages": [{"role": "user", "content": '
    '"What is the capital of France?"}]}'
)
_EMBED_EXAMPLE = ("/v1/embeddings", '{"model": "MODEL", "input": ["The sky is blue."]}')


async def _run_engines(engine_set: EngineSet, settings: Settings) -> None:
    await engine_set.start_all()
    for model in engine_set.models:
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
    await engine_set.prober.run()


def _error_response(error: GatewayError) -> Response:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return _error_response(_for_caller(request, exc))


async def _engine_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EngineError)
    return _error_response(_for_caller(request, from_engine_error(exc)))


def _for_caller(request: Request, error: GatewayError) -> GatewayError:
    principal = getattr(request.state, "principal", None)
    admin = principal is not None and principal.admin
    return for_caller(error, getattr(request.state, "request_id", None), admin)


async def _validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's 422 never leaks: the first problem becomes a 400 naming the field."""
    assert isinstance(exc, RequestValidationError)
    return _error_response(invalid_body(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _error_response(NotFound(f"No route {request.method} {request.url.path}."))
    if exc.status_code == 405:
        return _error_response(
            MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}.")
        )
    error = GatewayError(str(exc.detail))
    error.status = exc.status_code
    error.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return _error_response(error)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    rid = getattr(request.state, "request_id", None)
    log.error("unhandled error in request %s", rid, exc_info=exc)
    return _error_response(internal_error(rid))
