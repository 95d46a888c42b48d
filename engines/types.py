"""Plain data that crosses the engine boundary: one request in, a stream of chunks out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "developer", "user", "assistant"]

# The projections vLLM's LoRA layers wrap in Llama-style models.
LORA_TARGETS = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
)
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class Adapter:
    """One version of a LoRA adapter: `engine_id` is unique per (name, digest), so a
    changed adapter reloaded under the same name never reuses cached state."""

    name: str
    path: str
    digest: str
    engine_id: int


@dataclass(frozen=True, slots=True)
class AdapterSupport:
    """What adapters an engine can take; None on an engine means none at all."""

    max_rank: int
    max_loaded: int
    target_modules: frozenset[str]


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One generation, already validated by the caller.

    `prompt` is raw text (completions) or a conversation that the engine renders with
    the model's own chat template (chat). `logprobs` is None for none, or the number of
    alternatives to report per sampled token (0 = the sampled token alone).
    `max_tokens` None means "up to the model's context length".
    """

    request_id: str
    prompt: str | tuple[Message, ...]
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    adapter: Adapter | None = None

    @property
    def is_chat(self) -> bool:
        return not isinstance(self.prompt, str)


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class Chunk:
    """New output for one choice (`index`) of a request.

    `token_count` is the number of completion tokens this chunk adds; `prompt_tokens`
    is the request's prompt length, the same on every chunk. The last chunk of a
    choice carries `finish_reason`.
    """

    index: int
    text: str
    token_count: int
    prompt_tokens: int
    logprobs: tuple[TokenLogprob, ...] = field(default=())
    finish_reason: FinishReason | None = None


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class EngineStats:
    """What the engine's scheduler reported last (in-process engines only)."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    unfinished: int = 0
