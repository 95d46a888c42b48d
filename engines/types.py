"""Plain data that crosses the engine boundary: one request in, a stream of chunks out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]

# The projections vLLM's LoRA layers wrap in Llama-style models.
LORA_TARGETS = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
)
# OpenAI's finish reasons, and vLLM's "repetition": its `repetition_detection` ended
# the answer (`vllm serve` says so as it is).
FinishReason = Literal["stop", "length", "tool_calls", "repetition"]
FINISH_REASONS: frozenset[str] = frozenset(get_args(FinishReason))
Options = Mapping[str, Any]
# What a model serves: text generation, or embeddings (vLLM's pooling runner).
Task = Literal["generate", "embed"]


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message as the client sent it. `content` is text, a tuple of content
    parts (`{"type": "text", "text": ...}`, images, ...) or None (an assistant turn
    made only of `tool_calls`); `tool_calls` keep their OpenAI shape."""

    role: Role
    content: str | tuple[Mapping[str, Any], ...] | None
    name: str | None = None
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    tool_call_id: str | None = None

    def text(self) -> str:
        """The text parts, joined with newlines as vLLM joins them."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "\n".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")

    def wire(self) -> dict[str, Any]:
        """The OpenAI JSON of this message."""
        body: dict[str, Any] = {"role": self.role, "content": _content(self.content)}
        if self.name is not None:
            body["name"] = self.name
        if self.tool_calls:
            body["tool_calls"] = [dict(call) for call in self.tool_calls]
        if self.tool_call_id is not None:
            body["tool_call_id"] = self.tool_call_id
        return body


def _content(content: str | tuple[Mapping[str, Any], ...] | None) -> Any:
    return content if content is None or isinstance(content, str) else [dict(p) for p in content]


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

    `prompt` is raw text or token ids (completions), or a conversation that the engine
    renders with the model's own chat template (chat). `logprobs` is None for none, or
    the number of alternatives to report per sampled token (0 = the sampled token
    alone). `max_tokens` None means "up to the model's context length"; `temperature`
    and `top_p` None mean the model's defaults (its generation_config), else 1.0.

    `options` holds every other field of the OpenAI body that the client set, under
    its wire name (`tools`, `tool_choice`, `response_format`, `logit_bias`, `echo`,
    vLLM's `top_k`, `structured_outputs`, ...: `engines.options` lists them). An
    engine honours each one or raises UnsupportedParameter naming it; it never drops
    one. `incremental` False says the caller wants the answer whole (not streamed): an
    engine may then produce it in one piece, as vLLM's server parses tool calls
    differently for whole answers. It never changes what is generated.

    `resumed` k > 0 says the last k tokens of the token-id `prompt` are this
    generation's own output, already relayed by a backend that then failed: the
    engine continues the generation after them (a seeded sampler draws as if it had
    sampled them itself) and `max_tokens` counts what is still to come.

    `fit_max_tokens` says `max_tokens` is the gateway's default, not the client's: an
    engine lowers it to what the context leaves after the prompt instead of refusing
    it (vLLM lowers every max_tokens so; TGI and the scripted double refuse one that
    does not fit).
    """

    request_id: str
    prompt: str | tuple[int, ...] | tuple[Message, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    adapter: Adapter | None = None
    options: Options = field(default_factory=dict)
    incremental: bool = True
    resumed: int = 0
    fit_max_tokens: bool = False

    @property
    def is_chat(self) -> bool:
        return bool(self.prompt) and isinstance(self.prompt[0], Message)

    @property
    def messages(self) -> tuple[Message, ...]:
        """The conversation (chat requests); empty for completions."""
        return tuple(m for m in self.prompt if isinstance(m, Message))


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of one tool call of a choice, as OpenAI streams it: the first piece of
    call `index` carries its `id` and function `name`, later ones more `arguments`."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Chunk:
    """New output for one choice (`index`) of a request.

    `token_count` is the number of completion tokens this chunk adds; `prompt_tokens`
    is the request's prompt length (0 where the engine has not said it yet; the
    largest value seen counts). The last chunk of a choice carries `finish_reason`.
    `reasoning` is text a reasoning parser separated from the answer; `tool_calls`
    are parsed tool-call pieces. `stop_reason` is the stop string or token id that ended
    the choice, where one did, and `prompt_logprobs` vLLM's logprobs of the prompt's
    tokens (whole answers only); both vLLM's extensions, relayed as its server sends them.
    `token_ids` are the ids of the tokens this chunk adds, and `prompt_token_ids` the
    prompt's on a choice's first chunk, where the engine says them (vLLM's
    `return_token_ids`): what a stream cut by its backend resumes from elsewhere.
    `cached_tokens` is how many prompt tokens came from the engine's prefix cache,
    where it says (None: it does not), alongside the prompt's length.
    """

    index: int
    text: str
    token_count: int
    prompt_tokens: int
    logprobs: tuple[TokenLogprob, ...] = field(default=())
    finish_reason: FinishReason | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()
    reasoning: str = ""
    stop_reason: str | int | None = None
    prompt_logprobs: list[Any] | None = None
    token_ids: tuple[int, ...] = ()
    prompt_token_ids: tuple[int, ...] | None = None
    cached_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Health:
    """`instance` names the engine's serving process as far as the engine can tell: a
    new one while the engine stays healthy says it restarted (or otherwise lost what it
    was given at run time: adapters) between two probes. Empty: it cannot tell."""

    ok: bool
    detail: str = ""
    instance: str = ""


@dataclass(frozen=True, slots=True)
class EngineStats:
    """What the engine's scheduler reported last (in-process engines only)."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    unfinished: int = 0
