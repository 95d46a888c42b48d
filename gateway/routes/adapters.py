"""Runtime adapter management: admin keys only (gateway/middleware/auth.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from gateway.catalog import Catalog
from gateway.errors import InvalidRequest
from gateway.routes._respond import documented, parse
from gateway.state import shared

router = APIRouter()


class LoadAdapter(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    name: str
    path: str
    base: str | None = None


@router.get("/v1/adapters")
async def list_adapters(request: Request) -> dict[str, Any]:
    catalog = shared(request).catalog
    return {"object": "list", "data": [r.describe() for r in catalog.adapters.records()]}


@router.post("/v1/adapters", openapi_extra=documented(LoadAdapter))
async def load_adapter(request: Request) -> dict[str, Any]:
    """Load (or reload) an adapter from a path under the base's adapter root; a
    relative path is taken relative to that root. Runtime loads need a root."""
    catalog = shared(request).catalog
    body = await parse(request, LoadAdapter)
    base_id = body.base or _only_base(catalog)
    host = catalog.host(base_id)
    if host.root is None:
        raise InvalidRequest(
            f"Runtime loads for '{base_id}' are off: set adapter_root for its engine.",
            param="path",
        )
    if any(body.name == m.id for m in catalog.models):
        raise InvalidRequest(f"'{body.name}' is a base model's name.", param="name")
    path = host.root / body.path  # an absolute body.path replaces the root; inspect checks
    record = await catalog.adapters.load(body.name, path, base_id, host)
    return record.describe()


@router.delete("/v1/adapters/{name}")
async def unload_adapter(name: str, request: Request) -> dict[str, Any]:
    """Stop routing to the adapter now; answer once its in-flight requests are done
    (with workers: once every worker stopped routing to it and finished its own)."""
    await shared(request).catalog.adapters.unload(name)
    return {"name": name, "object": "adapter", "deleted": True}


def _only_base(catalog: Catalog) -> str:
    bases = [m.id for m in catalog.models if m.pool.support]
    if len(bases) != 1:
        raise InvalidRequest(
            f"Name the base model: 'base' is one of {', '.join(bases) or '(none take adapters)'}.",
            param="base",
        )
    return bases[0]
