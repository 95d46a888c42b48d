"""A scripted engine: the test double, shipped as a real implementation.

It speaks the engine interface with predictable output, pacing and failures, so unit
tests and load tests can exercise the gateway without a model. It is not a model:
it never appears in `make serve`'s default config.

Output: `reply` split into word-sized tokens, or, when `reply` is None, the last user
message (or the prompt) echoed back. With temperature > 0 the words are shuffled by a
generator seeded from `seed` and the choice index, so a fixed seed repeats itself.
A request on an adapter starts its reply with the word `[adapter-name]`; one on an
adapter it does not hold is AdapterMissing, as `vllm serve` answers 404 for it. Closed
and started again, it is a restarted server: a new `Health.instance`, no adapters.

With `serves: [embed]` it is an embedding model: each input's vector (of
`embedding_size` floats, unit length) comes from the sha256 of the input, so equal
inputs give equal vectors and different ones differ; `dimensions` keeps the first
ones. Its tokenizer is byte-level: a text's token ids are its UTF-8 bytes.
"""

from __future__ import annotations

import array
import base64
import hashlib
import math
import random
import re
import uuid
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import anyio

from engines.errors import (
    AdapterMissing,
    ContextLengthExceeded,
    EngineUnavailable,
    GenerationFailed,
    InvalidGenerationRequest,
    UnsupportedParameter,
)
from engines.options import refuse_non_text, refuse_unhonoured
from engines.tasks import require
from engines.types import (
    Adapter,
    AdapterSupport,
    Chunk,
    EngineStats,
    FinishReason,
    GenerationRequest,
    Health,
    Task,
    TokenLogprob,
)

_TOKEN = re.compile(r"\s*\S+|\s+")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text)


@dataclass(frozen=True, slots=True)
class ScriptedConfig:
    reply: str | None = "The scripted engine says hello to you."
    first_token_delay_s: float = 0.0
    token_delay_s: float = 0.0
    start_delay_s: float = 0.0
    fail_after_tokens: int | None = None
    max_model_len: int = 4096
    unsupported: tuple[str, ...] = ()
    max_lora_rank: int = 16
    max_loras: int = 4
    serves: tuple[Task, ...] = ("generate",)
    embedding_size: int = 8

    __pydantic_config__ = {"extra": "forbid"}


class ScriptedEngine:
    Config = ScriptedConfig

    def __init__(self, name: str, model_id: str, config: ScriptedConfig) -> None:
        self.name = name
        self.model_id = model_id
        self.config = config
        self.running = 0
        self.aborted = 0
        self.generations = 0  # started, past validation
        self._started = False
        self._instance = ""
        self._versions: dict[int, Adapter] = {}  # by engine_id
        self.serves: frozenset[Task] = frozenset(config.serves)
        self.weights: str | None = None  # not a model
        self.adapter_support = AdapterSupport(
            max_rank=config.max_lora_rank,
            max_loaded=config.max_loras,
            target_modules=frozenset({"q_proj", "k_proj", "v_proj", "o_proj"}),
        )

    async def start(self) -> None:
        await anyio.sleep(self.config.start_delay_s)
        self._started = True
        self._instance = uuid.uuid4().hex

    async def health(self) -> Health:
        detail = "" if self._started else "not started"
        return Health(ok=self._started, detail=detail, instance=self._instance)

    @property
    def adapters(self) -> Mapping[str, Adapter]:
        return {a.name: a for a in self._versions.values()}  # the latest version wins

    async def load_adapter(self, adapter: Adapter) -> None:
        self._versions[adapter.engine_id] = adapter

    async def unload_adapter(self, adapter: Adapter) -> None:
        self._versions.pop(adapter.engine_id, None)

    def stats(self) -> EngineStats:
        return EngineStats(running=self.running, unfinished=self.running)

    async def aclose(self) -> None:
        self._started = False
        self._versions.clear()

    def _check(self, request: GenerationRequest) -> list[str]:
        self._ready()
        require(
            self.model_id, self.serves, "generate", "chat" if request.is_chat else "completions"
        )
        for param in self.config.unsupported:
            if _is_set(request, param):
                raise UnsupportedParameter(param, "scripted")
        refuse_unhonoured(request, "scripted", (), "It is a test double that only echoes text.")
        refuse_non_text(request, "scripted")
        prompt_text = _text(request)
        prompt_tokens = tokenize(prompt_text)
        budget = self.config.max_model_len - len(prompt_tokens)
        wanted = 0 if request.fit_max_tokens else request.max_tokens or 0
        if budget <= 0 or wanted > budget:
            raise ContextLengthExceeded(
                len(prompt_tokens),
                request.max_tokens,
                self.config.max_model_len,
                param="messages" if request.is_chat else "prompt",
            )
        return prompt_tokens

    def _ready(self) -> None:
        if not self._started:
            raise EngineUnavailable(f"engine {self.name!r} is not started")

    # -- embeddings and tokens ---------------------------------------------------------

    async def embed(self, body: Mapping[str, Any], adapter: Adapter | None) -> dict[str, Any]:
        self._ready()
        require(self.model_id, self.serves, "embed", "embeddings")
        inputs = _embedding_inputs(body)
        size = self.config.embedding_size
        dimensions = body.get("dimensions")
        if dimensions is not None and not 1 <= dimensions <= size:
            raise InvalidGenerationRequest(
                f"dimensions must be between 1 and {size} for this model.", param="dimensions"
            )
        self.generations += 1
        data = []
        for index, text in enumerate(inputs):
            vector = _vector(text, size)[: dimensions or size]
            embedding: list[float] | str = vector
            if body.get("encoding_format") == "base64":
                embedding = base64.b64encode(array.array("f", vector).tobytes()).decode()
            data.append({"index": index, "object": "embedding", "embedding": embedding})
        tokens = sum(len(text.encode()) for text in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {"object": "list", "model": self.model_id, "data": data, "usage": usage}

    async def tokenize(self, body: Mapping[str, Any], adapter: Adapter | None) -> dict[str, Any]:
        self._ready()
        messages = body.get("messages")
        text = _conversation(messages) if messages is not None else str(body.get("prompt", ""))
        tokens = list(text.encode())
        answer: dict[str, Any] = {
            "count": len(tokens),
            "max_model_len": self.config.max_model_len,
            "tokens": tokens,
            "token_strs": None,
        }
        if body.get("return_token_strs"):
            answer["token_strs"] = [chr(t) for t in tokens]
        return answer

    async def detokenize(self, body: Mapping[str, Any], adapter: Adapter | None) -> dict[str, Any]:
        self._ready()
        tokens = body.get("tokens") or []
        if any(not 0 <= t < 256 for t in tokens):
            raise InvalidGenerationRequest(
                "Token ids of the scripted engine are bytes (0-255).", param="tokens"
            )
        return {"prompt": bytes(tokens).decode("utf-8", "replace")}

    def _reply(self, request: GenerationRequest, index: int) -> list[str]:
        """The reply's words; an adapter shows itself as a leading `[name]` word."""
        if request.adapter is not None:
            if request.adapter.engine_id not in self._versions:
                raise AdapterMissing(f"adapter {request.adapter.name!r} is not loaded")
            return [
                f"[{request.adapter.name}]",
                *self._reply(replace(request, adapter=None), index),
            ]
        if self.config.reply is not None:
            words = tokenize(self.config.reply)
        elif not request.is_chat:
            words = tokenize(_text(request))
        else:
            users = [m.text() for m in request.messages if m.role == "user"]
            words = tokenize(users[-1] if users else "")
        if request.temperature is None or request.temperature > 0:
            seed = request.seed if request.seed is not None else random.randrange(2**32)
            random.Random(seed * 1009 + index).shuffle(words)
        return words

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        prompt_tokens = len(self._check(request))
        budget = self.config.max_model_len - prompt_tokens
        limit = min(request.max_tokens or budget, budget)
        scripts = [_script(self._reply(request, i), request, limit) for i in range(request.n)]
        self.running += 1
        self.generations += 1
        finished = False
        try:
            await anyio.sleep(self.config.first_token_delay_s)
            fail_at = self.config.fail_after_tokens
            for step in range(max(len(script) for script in scripts)):
                if fail_at is not None and step >= fail_at:
                    raise GenerationFailed("scripted failure")
                if step and self.config.token_delay_s:
                    await anyio.sleep(self.config.token_delay_s)
                for index, script in enumerate(scripts):
                    if step < len(script):
                        text, logprobs, finish = script[step]
                        yield Chunk(index, text, 1, prompt_tokens, logprobs, finish)
            finished = True
        finally:
            self.running -= 1
            if not finished:
                self.aborted += 1


_Step = tuple[str, tuple[TokenLogprob, ...], FinishReason | None]


def _script(words: list[str], request: GenerationRequest, limit: int) -> list[_Step]:
    """One choice's steps, as an engine would emit them: stop strings cut the text (and
    are not included), `limit` tokens end it with "length"."""
    steps: list[_Step] = []
    text = ""
    for word in words[:limit]:
        candidate = text + word
        cuts = [candidate.find(stop) for stop in request.stop if stop in candidate]
        if cuts:
            steps.append((candidate[len(text) : max(min(cuts), len(text))], (), "stop"))
            return steps
        text = candidate
        steps.append((word, _logprobs(word, words, request.logprobs), None))
    finish: FinishReason = "length" if len(words) > limit else "stop"
    if steps:
        steps[-1] = (*steps[-1][:2], finish)
    else:
        steps.append(("", (), finish))
    return steps


def _logprobs(word: str, words: list[str], top: int | None) -> tuple[TokenLogprob, ...]:
    if top is None:
        return ()
    alternatives = tuple((alt, -0.5 - rank) for rank, alt in enumerate(words[:top]))
    return (TokenLogprob(token=word, logprob=-0.25, top=alternatives),)


def _text(request: GenerationRequest) -> str:
    """The prompt as text: a conversation as `role: text` lines, token ids as words."""
    if isinstance(request.prompt, str):
        return request.prompt
    if request.is_chat:
        return "".join(f"{m.role}: {m.text()}\n" for m in request.messages)
    return " ".join(str(token) for token in request.prompt)


def _conversation(messages: Any) -> str:
    return "".join(f"{m.get('role')}: {m.get('content')}\n" for m in messages)


def _embedding_inputs(body: Mapping[str, Any]) -> list[str]:
    """Each input of an embeddings body as text: a string, token ids, a conversation."""
    value = body.get("messages", body.get("input"))
    if isinstance(value, str) or (value and not isinstance(value[0], str | list)):
        value = [value]  # one text, one list of token ids or one conversation
    return [_as_text(item) for item in value or ()]


def _as_text(item: Any) -> str:
    if isinstance(item, str):
        return item
    if item and isinstance(item[0], dict):
        return _conversation(item)
    return " ".join(map(str, item))


def _vector(text: str, size: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    raw = [digest[i % len(digest)] - 127.5 for i in range(size)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def _is_set(request: GenerationRequest, param: str) -> bool:
    value = getattr(request, param, None)
    defaults = {"n": 1, "temperature": 1.0, "top_p": 1.0, "stop": ()}
    return value is not None and value != defaults.get(param, 0.0)
