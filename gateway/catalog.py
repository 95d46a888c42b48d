"""The models this gateway serves, each a pool of backends (engines sharing a model
id), with their start-up, health probing and shut-down; and the resolution of a
requested model name to a pool and, for adapters, an adapter."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from gateway.adapter_files import Artifact
from gateway.adapters import AdapterHost, AdapterRecord, AdapterRegistry
from gateway.balancer.backend import Backend
from gateway.balancer.health import Prober
from gateway.balancer.pool import Pool
from gateway.cache.keys import Identity
from gateway.errors import ModelNotFound, ServiceUnavailable
from gateway.settings import BalancerSettings

log = logging.getLogger("switchyard")


@dataclass(slots=True)
class Model:
    """One model id: its pool, what adapters may name as their base, and the adapters
    loaded at start-up."""

    host: AdapterHost
    startup_adapters: list[tuple[str, Path]] = field(default_factory=list)

    @property
    def pool(self) -> Pool:
        return self.host.pool

    @property
    def id(self) -> str:
        return self.pool.model_id


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes: the pool, and the adapter version if one was named."""

    pool: Pool
    adapter: AdapterRecord | None = None
    artifact: Artifact | None = None

    def identity(self) -> Identity:
        """Who answers, as far as the response cache is concerned."""
        adapter = self.adapter.adapter if self.adapter else None
        return Identity(
            self.pool.model_id,
            self.artifact.id if self.artifact else None,
            adapter.name if adapter else None,
            adapter.digest if adapter else None,
        )


class Catalog:
    """The models served: owns start-up, probing and shut-down of their engines, and
    resolves the names requests give to a pool (and an adapter)."""

    def __init__(self, models: Iterable[Model], settings: BalancerSettings) -> None:
        self._models: dict[str, Model] = {}
        for model in models:
            if model.id in self._models:
                raise ValueError(f"two pools serve the model id {model.id!r}")
            self._models[model.id] = model
        self.adapters = AdapterRegistry()
        self.prober = Prober([m.pool for m in self._models.values()], settings, self._restore)

    @property
    def models(self) -> list[Model]:
        return list(self._models.values())

    def host(self, model_id: str) -> AdapterHost:
        model = self._models.get(model_id)
        if model is None:
            raise ModelNotFound(model_id)
        return model.host

    def resolve(self, name: str) -> Route:
        adapter = self.adapters.get(name)
        model = self._models.get(adapter.base if adapter else name)
        if model is None:
            raise ModelNotFound(name)
        state = model.pool.state()
        if state == "loading":
            raise ServiceUnavailable(f"The model '{name}' is still loading; retry shortly.")
        if state == "failed":  # why is configuration: in the log and, for admins, /ready
            raise ServiceUnavailable(
                f"The model '{name}' failed to start; the gateway's log says why."
            )
        return Route(model.pool, adapter, model.host.artifact)

    @property
    def ready(self) -> bool:
        return all(m.pool.state() == "ready" for m in self._models.values())

    async def start_all(self) -> None:
        """Start every engine, one after the other (in-process ones compete for the
        same cores), probe each once, then load the start-up adapters."""
        for model in self._models.values():
            for backend in model.pool.backends:
                await self._start(backend)
            await asyncio.gather(
                *(self.prober.probe(model.pool, b, first=True) for b in model.pool.backends)
            )
            await self._load_startup_adapters(model)

    async def _start(self, backend: Backend) -> None:
        if backend.state == "ready":
            return
        try:
            await backend.engine.start()
        except Exception as exc:
            backend.state, backend.error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("engine %s failed to start", backend.name)
        else:
            backend.state = "ready"
            log.info("engine %s ready: serving %r", backend.name, backend.engine.model_id)

    async def _restore(self, pool: Pool, backend: Backend) -> None:
        await self.adapters.restore(pool, backend)

    async def _load_startup_adapters(self, model: Model) -> None:
        for name, path in model.startup_adapters:
            try:
                await self.adapters.load(
                    name, path, model.id, model.host, enforce_root=False, require_placed=False
                )
            except Exception as exc:
                log.error("adapter %s for %s was not loaded: %s", name, model.id, exc)

    async def aclose(self) -> None:
        await self.adapters.aclose()
        with anyio.CancelScope(shield=True):
            for model in self._models.values():
                for backend in model.pool.backends:
                    try:
                        await backend.engine.aclose()
                    except Exception:
                        log.exception("engine %s failed to close", backend.name)
