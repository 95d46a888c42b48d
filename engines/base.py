"""The engine interface: small, all-async, structural (test doubles need not inherit)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Protocol, runtime_checkable

from engines.types import Adapter, AdapterSupport, Chunk, EngineStats, GenerationRequest, Health


@runtime_checkable
class Engine(Protocol):
    """One engine serving one base model (and, later, its adapters).

    Lifecycle: constructed cheaply, `start()` once (may take minutes: loads weights),
    `generate()` any number of times concurrently, `aclose()` once.

    `generate()` owns the request inside the engine: when the caller stops iterating
    (closes the iterator or is cancelled, e.g. on client disconnect) the engine aborts
    the request, so no orphan generation keeps running.
    """

    name: str
    model_id: str
    adapter_support: AdapterSupport | None

    async def start(self) -> None: ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]: ...

    async def health(self) -> Health: ...

    @property
    def adapters(self) -> Mapping[str, Adapter]:
        """Adapters loaded in this engine, by name."""
        ...

    async def load_adapter(self, adapter: Adapter) -> None:
        """Make `adapter` usable by requests; raises InvalidGenerationRequest if the
        engine cannot load it. A new version of a name becomes the listed one; the
        old version keeps serving its requests until it is unloaded."""
        ...

    async def unload_adapter(self, adapter: Adapter) -> None:
        """Free this version (by `engine_id`); callers drain its requests first."""
        ...

    def stats(self) -> EngineStats: ...

    async def aclose(self) -> None: ...
