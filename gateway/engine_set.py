"""The engines this gateway serves, by model id, with their start-up state."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import anyio

from engines.base import Engine
from gateway.errors import ModelNotFound, ServiceUnavailable

log = logging.getLogger("switchyard")

State = Literal["loading", "ready", "failed"]


@dataclass(slots=True)
class Served:
    engine: Engine
    state: State = "loading"
    error: str = ""


class EngineSet:
    """Owns start-up and shut-down of its engines; resolves a model id to one engine."""

    def __init__(self, engines: Iterable[Engine]) -> None:
        self._by_model: dict[str, Served] = {}
        for engine in engines:
            if engine.model_id in self._by_model:
                raise ValueError(f"two engines serve the model id {engine.model_id!r}")
            self._by_model[engine.model_id] = Served(engine)

    @property
    def served(self) -> list[Served]:
        return list(self._by_model.values())

    def resolve(self, model: str) -> Engine:
        served = self._by_model.get(model)
        if served is None:
            raise ModelNotFound(model)
        if served.state == "loading":
            raise ServiceUnavailable(f"The model '{model}' is still loading; retry shortly.")
        if served.state == "failed":
            raise ServiceUnavailable(f"The model '{model}' failed to start: {served.error}")
        return served.engine

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

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            for served in self._by_model.values():
                try:
                    await served.engine.aclose()
                except Exception:
                    log.exception("engine %s failed to close", served.engine.name)
