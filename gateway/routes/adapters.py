"""Runtime adapter management: admin keys only (gateway/middleware/auth.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from gateway.engine_set import EngineSet
from gateway.errors import InvalidRequest
from gateway.routes._respond import documented, parse

router = APIRouter()


class LoadAdapter(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    name: str
    path: str
    base: str | None = None


@router.get("/v1/adapters")
async def list_adapters(request: Request) -> dict[str, Any]:
    engines: EngineSet = request.app.state.engines
    return {"object": "list", "data": [r.describe() for r in engines.adapters.records()]}


@router.post("/v1/adapters", openapi_extra=documented(LoadAdapter))
async def load_adapter(request: Request) -> dict[str, Any]:
    """Load (or reload) an adapter from a path under the base's adapter root; a
    relative path is taken relative to that root. Runtime loads need a root."""
    engines: EngineSet = request.app.state.engines
    body = await parse(request, LoadAdapter)
    base_id = body.base or _only_base(engines)
    base = engines.base(base_id)
    if base.root is None:
        raise InvalidRequest(
            f"Runtime loads for '{base_id}' are off: set adapter_root for its engine.",
            param="path",
        )
    if any(body.name == m.id for m in engines.models):
        raise InvalidRequest(f"'{body.name}' is a base model's name.", param="name")
    path = base.root / body.path  # an absolute body.path replaces the root; inspect checks
    record = await engines.adapters.load(body.name, path, base_id, base)
    return record.describe()


@router.delete("/v1/adapters/{name}")
async def unload_adapter(name: str, request: Request) -> dict[str, Any]:
    """Stop routing to the adapter now; answer once its in-flight requests are done."""
    engines: EngineSet = request.app.state.engines
    await engines.adapters.unload(name)
    return {"name": name, "object": "adapter", "deleted": True}


def _only_base(engines: EngineSet) -> str:
    bases = [m.id for m in engines.models if m.pool.support]
    if len(bases) != 1:
        raise InvalidRequest(
            f"Name the base model: 'base' is one of {', '.join(bases) or '(none take adapters)'}.",
            param="base",
        )
    return bases[0]
