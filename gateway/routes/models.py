"""`GET /v1/models`: every configured model and its loaded adapters, always, so a
client that lists models before calling finds them while they load or while their
backends are down. OpenAI's model objects (with vLLM's `root` and `parent`), plus
`state`, the model's readiness as `/ready` words it: "ready" (something can serve
it), "loading", "unavailable" (backends down or ejected), "failed" (did not start).
An adapter is "ready" when a routable backend of its base holds it, else its base's
state, or "unavailable" if its base is ready but none that holds it is. A key sees
only the models it may use."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from gateway.adapter_files import Artifact
from gateway.state import principal, shared

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    gateway = shared(request)
    catalog, created, who = gateway.catalog, gateway.started_at, principal(request)
    now = time.monotonic()
    states = {m.id: m.pool.state() for m in catalog.models}
    models = [_model(m.id, None, states[m.id], created, m.host.artifact) for m in catalog.models]
    for record in catalog.adapters.records():
        if record.state != "ready":
            continue  # draining: new requests for it are refused
        routable = {b.name for b in record.pool.backends if b.routable(now)}
        state = states[record.base]
        if state == "ready" and not record.placed & routable:
            state = "unavailable"
        models.append(_model(record.adapter.name, record.base, state, created))
    visible = [m for m in models if who.may_use(m["id"])]
    return {"object": "list", "data": visible}


def _model(
    model_id: str, parent: str | None, state: str, created: int, artifact: Artifact | None = None
) -> dict[str, Any]:
    model = {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": "switchyard",
        "root": model_id,
        "parent": parent,
        "state": state,
    }
    if artifact:
        model["artifact"] = artifact.describe()
    return model
