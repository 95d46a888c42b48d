"""The engine interface: small, all-async, structural (test doubles need not inherit)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any, Protocol, runtime_checkable

from engines.types import (
    Adapter,
    AdapterSupport,
    Chunk,
    EngineStats,
    GenerationRequest,
    Health,
    Task,
)


@runtime_checkable
class Engine(Protocol):
    """One engine serving one base model and, if it takes them, its adapters.

    Lifecycle: constructed cheaply, `start()` once (may take minutes: loads weights),
    `generate()` any number of times concurrently, `aclose()` once.

    `generate()` owns the request inside the engine: when the caller stops iterating
    (closes the iterator or is cancelled, e.g. on client disconnect) the engine aborts
    the request, so no orphan generation keeps running.

    `serves` says what the model serves: "generate" (`generate()`), "embed"
    (`Embedder.embed`), or both; an engine asked for what it does not serve raises
    UnsupportedEndpoint (engines/tasks.py). It may change once, in `start()`, when
    the engine learns it from the model.

    `weights` is where the model it serves comes from when the engine loads it itself
    (a directory or a hub id: the gateway reads an artifact's manifest there and lets
    adapters name their base by it); None when a server elsewhere holds the model.
    """

    name: str
    model_id: str
    adapter_support: AdapterSupport | None
    serves: frozenset[Task]
    weights: str | None

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


# Optional capabilities, each its own small Protocol: the gateway checks for one with
# isinstance and answers a 400 naming the model when the engine has none. They take and
# return the JSON bodies of vLLM's server (OpenAI's where OpenAI defines the endpoint),
# `model` excepted: the engine names its own model (or `adapter`) upstream, and the
# caller names the model in the answer.


@runtime_checkable
class Embedder(Protocol):
    async def embed(self, body: Mapping[str, Any], adapter: Adapter | None) -> dict[str, Any]:
        """`POST /v1/embeddings`: the whole answer (`data`, `usage`). Raises
        UnsupportedEndpoint when the model serves no embeddings."""
        ...


@runtime_checkable
class Tokenizer(Protocol):
    async def tokenize(self, body: Mapping[str, Any], adapter: Adapter | None) -> dict[str, Any]:
        """`POST /tokenize`: a `prompt`, or `messages` rendered with the chat template,
        as token ids (`tokens`, `count`, `max_model_len`)."""
        ...

    async def detokenize(self, body: Mapping[str, Any], adapter: Adapter | None) -> dict[str, Any]:
        """`POST /detokenize`: `tokens` as text (`prompt`)."""
        ...
