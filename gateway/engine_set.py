"""The engines this gateway serves, by model id, with their start-up state, and the
resolution of a requested model name to an engine and, for adapters, an adapter."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anyio

from engines.base import Engine
from gateway.adapters import AdapterRecord, AdapterRegistry, Base
from gateway.errors import ModelNotFound, ServiceUnavailable

log = logging.getLogger("switchyard")

State = Literal["loading", "ready", "failed"]


@dataclass(slots=True)
class Served:
    engine: Engine
    base: Base
    startup_adapters: list[tuple[str, Path]] = field(default_factory=list)
    state: State = "loading"
    error: str = ""


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes: the engine, and the adapter version if one was named."""

    engine: Engine
    adapter: AdapterRecord | None = None


class EngineSet:
    """Owns start-up and shut-down of its engines; resolves a model id to one engine."""

    def __init__(self, served: Iterable[Served]) -> None:
        self._by_model: dict[str, Served] = {}
        self.adapters = AdapterRegistry()
        for s in served:
            if s.engine.model_id in self._by_model:
                raise ValueError(f"two engines serve the model id {s.engine.model_id!r}")
            self._by_model[s.engine.model_id] = s

    def base(self, model_id: str) -> Base:
        served = self._by_model.get(model_id)
        if served is None:
            raise ModelNotFound(model_id)
        return served.base

    @property
    def served(self) -> list[Served]:
        return list(self._by_model.values())

    def resolve(self, model: str) -> Route:
        adapter = self.adapters.get(model)
        served = self._by_model.get(adapter.base if adapter else model)
        if served is None:
            raise ModelNotFound(model)
        if served.state == "loading":
            raise ServiceUnavailable(f"The model '{model}' is still loading; retry shortly.")
        if served.state == "failed":
            raise ServiceUnavailable(f"The model '{model}' failed to start: {served.error}")
        return Route(served.engine, adapter)

    @property
    def ready(self) -> bool:
        return all(s.state == "ready" for s in self._by_model.values())

    async def start_all(self) -> None:
        """Start every engine, one after the other (they compete for the same cores)."""
        for served in self._by_model.values():
            if served.state == "ready":
                continue
            name = served.engine.name
            try:
                await served.engine.start()
            except Exception as exc:
                served.state, served.error = "failed", f"{type(exc).__name__}: {exc}"
                log.exception("engine %s failed to start", name)
            else:
                served.state = "ready"
                log.info("engine %s ready: serving %r", name, served.engine.model_id)
                await self._load_startup_adapters(served)

    async def _load_startup_adapters(self, served: Served) -> None:
        model_id = served.engine.model_id
        for name, path in served.startup_adapters:
            try:
                await self.adapters.load(name, path, model_id, served.base, enforce_root=False)
            except Exception as exc:
                log.error("adapter %s for %s was not loaded: %s", name, model_id, exc)

    async def aclose(self) -> None:
        await self.adapters.aclose()
        with anyio.CancelScope(shield=True):
            for served in self._by_model.values():
                try:
                    await served.engine.aclose()
                except Exception:
                    log.exception("engine %s failed to close", served.engine.name)
