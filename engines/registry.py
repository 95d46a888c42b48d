"""Engines by name, imported lazily: a TGI-only deployment never imports vllm."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import pydantic

from engines.base import Engine
from engines.errors import EngineError

ENGINES: dict[str, str] = {
    "vllm": "engines.vllm_local:VLLMEngine",
    "scripted": "engines.scripted:ScriptedEngine",
    "openai_remote": "engines.openai_remote:OpenAIRemoteEngine",
    "tgi": "engines.tgi:TGIEngine",
}


class EngineConfigError(EngineError):
    pass


def load_engine_class(kind: str) -> Any:
    try:
        target = ENGINES[kind]
    except KeyError:
        raise EngineConfigError(
            f"Unknown engine kind {kind!r}; choose one of: {', '.join(sorted(ENGINES))}."
        ) from None
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EngineConfigError(
            f"The {kind!r} engine needs a package that is not installed ({exc.name}). "
            "Run `make serve` (or scripts/setup-venv.sh) to install the engine for this host."
        ) from exc
    return getattr(module, attr)


def build_engine(kind: str, name: str, model_id: str, options: Mapping[str, Any]) -> Engine:
    """Validate `options` against the engine's own `Config` dataclass and construct it."""
    cls = load_engine_class(kind)
    try:
        config = pydantic.TypeAdapter(cls.Config).validate_python(dict(options))
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise EngineConfigError(f"engine {name!r} ({kind}): {problems}") from None
    engine: Engine = cls(name=name, model_id=model_id, config=config)
    return engine
