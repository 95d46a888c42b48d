"""What the embeddings and tokenizer routes do after validating their body: the same
checks as generation routes (the key may use the model, its rate limits), then one
engine call through the pool (gateway/pooled.py), its metrics and access-log line
(gateway/observe.py), and the answer naming the model as the client did."""

from __future__ import annotations

from fastapi import Request
from starlette.responses import Response

from engines.types import Task
from gateway import pooled
from gateway.auth.keys import Principal
from gateway.call import Outcome
from gateway.catalog import Catalog
from gateway.errors import InvalidRequest, ModelNotFound, status_of
from gateway.observe import Finished, record
from gateway.routes._respond import (
    JSONResponse,
    admit,
    cancel_on_disconnect,
    enter,
    request_id,
)
from gateway.state import principal, shared


async def answer(
    request: Request,
    model: str | None,
    endpoint: str,
    operation: pooled.Operation,
    task: Task | None = None,
) -> Response:
    """Run `operation` for `model` (which must serve `task`, if given) and answer its
    JSON; `endpoint` labels metrics and logs ("embeddings", "tokenize", ...)."""
    state = shared(request)
    who = principal(request)
    name = model if model is not None else _only_model(state.catalog, who)
    if not who.may_use(name):
        raise ModelNotFound(name)  # the same answer as for a model that is not here
    in_flight = state.in_flight
    enter(in_flight, who)
    try:
        return await _answer(request, name, endpoint, operation, task)
    finally:
        in_flight.leave(who)


async def _answer(
    request: Request, name: str, endpoint: str, operation: pooled.Operation, task: Task | None
) -> Response:
    """`answer` with the key's place in flight taken."""
    state = shared(request)
    who = principal(request)
    rate_headers, _ = await admit(state.limiter, who, state.metrics)
    observation = state.metrics.start(stream=False) if state.metrics is not None else None
    outcome = Outcome()

    def finish(status: int, tokens: int = 0) -> None:
        end = Finished(request_id(request), endpoint, status, False, who.label, outcome)
        record(observation, end, tokens)

    try:
        route = state.catalog.resolve(name)
        need = (task, endpoint) if task is not None else None
        work = pooled.call(route, operation, outcome, need)
        body = await cancel_on_disconnect(request.receive, work)
    except Exception as exc:
        finish(status_of(exc))
        raise
    usage = body.get("usage")
    tokens = int(usage.get("prompt_tokens") or 0) if isinstance(usage, dict) else 0
    finish(200, tokens)
    if who.tpm is not None and state.limiter is not None and tokens:
        await state.limiter.charge(who, tokens)
    if "model" in body:
        body["model"] = name
    headers = dict(rate_headers)
    if who.admin and outcome.backend:
        headers["x-switchyard-backend"] = outcome.backend
    return JSONResponse(body, headers=headers)


def _only_model(catalog: Catalog, principal: Principal) -> str:
    """vLLM's server takes a body without `model` (it serves one); so does a gateway
    serving this key one model. Otherwise the model must be named."""
    visible = [m.id for m in catalog.models if principal.may_use(m.id)]
    if len(visible) == 1:
        return visible[0]
    raise InvalidRequest(
        "Missing required parameter: 'model'. GET /v1/models lists the models served here.",
        param="model",
    )
