"""OpenAI bodies → engine requests, engine chunks → OpenAI responses and stream chunks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from engines.types import Chunk, FinishReason, GenerationRequest, Message, TokenLogprob
from gateway.errors import InvalidRequest
from gateway.openai.schemas import ChatCompletionRequest, CompletionRequest, _Sampling

# Field → the values that mean "not used"; anything else gets a 400 naming the field.
_UNHONOURED: dict[str, tuple[Any, ...]] = {
    "logit_bias": (None, {}),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "echo": (None, False),
    "suffix": (None, ""),
}


def _reject_unhonoured(body: _Sampling) -> None:
    for name, unused in _UNHONOURED.items():
        if name in type(body).model_fields and getattr(body, name) not in unused:
            raise InvalidRequest(
                f"'{name}' is not supported by this gateway yet; remove it from the request.",
                param=name,
                code="unsupported_parameter",
            )


def _common(body: _Sampling, max_n: int) -> dict[str, Any]:
    _reject_unhonoured(body)
    n = body.n or 1
    if n > max_n:
        raise InvalidRequest(f"n must be at most {max_n}; got {n}.", param="n")
    return {
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "n": n,
        "stop": body.stops(),
        "seed": body.seed,
        "presence_penalty": body.presence_penalty or 0.0,
        "frequency_penalty": body.frequency_penalty or 0.0,
    }


def chat_request(body: ChatCompletionRequest, request_id: str, max_n: int) -> GenerationRequest:
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequest("top_logprobs requires logprobs to be true.", param="top_logprobs")
    if (
        body.max_tokens is not None
        and body.max_completion_tokens is not None
        and body.max_tokens != body.max_completion_tokens
    ):
        raise InvalidRequest(
            "max_tokens and max_completion_tokens disagree; send only max_completion_tokens.",
            param="max_tokens",
        )
    messages = tuple(Message(m.role, m.text()) for m in body.messages)
    return GenerationRequest(
        request_id=request_id,
        prompt=messages,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        **_common(body, max_n),
    )


def completion_requests(
    body: CompletionRequest, request_id: str, max_n: int
) -> list[GenerationRequest]:
    """One engine request per prompt; a list of prompts is a batch."""
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts:
        raise InvalidRequest("The prompt list is empty; send at least one prompt.", param="prompt")
    if not all(isinstance(p, str) for p in prompts):
        raise InvalidRequest(
            "Token-id prompts are not supported; send the prompt as text.", param="prompt"
        )
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise InvalidRequest("best_of other than n is not supported.", param="best_of")
    common = _common(body, max_n)
    return [
        GenerationRequest(
            request_id=f"{request_id}-{i}" if len(prompts) > 1 else request_id,
            prompt=str(prompt),
            max_tokens=body.max_tokens,
            logprobs=body.logprobs,
            **common,
        )
        for i, prompt in enumerate(prompts)
    ]


# -- responses -----------------------------------------------------------------------


@dataclass(slots=True)
class _Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    offset: int = 0  # characters emitted so far (completions' text_offset)


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def body(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


class Renderer:
    """Turns the chunks of one request into an OpenAI response or stream chunks.

    `index` on incoming chunks is already the response-wide choice index. Chunks with
    no text and no finish (the end-of-sequence token) are not shown to clients.
    """

    object_name: str
    chunk_object_name: str
    id_prefix: str

    def __init__(self, request_id: str, model: str, n: int, logprobs: bool) -> None:
        self.id = f"{self.id_prefix}{request_id}"
        self.model = model
        self.created = int(time.time())
        self.n = n
        self.with_logprobs = logprobs
        self.choices = [_Choice() for _ in range(n)]
        self.usage = Usage()
        self._prompt_seen: set[int] = set()

    def count(self, chunk: Chunk, prompt_slot: int) -> None:
        self.usage.completion_tokens += chunk.token_count
        if prompt_slot not in self._prompt_seen:
            self._prompt_seen.add(prompt_slot)
            self.usage.prompt_tokens += chunk.prompt_tokens

    def add(self, chunk: Chunk) -> None:
        choice = self.choices[chunk.index]
        if chunk.text:
            choice.text.append(chunk.text)
            choice.logprobs.extend(chunk.logprobs)
        if chunk.finish_reason:
            choice.finish_reason = chunk.finish_reason

    def _envelope(self, choices: list[dict[str, Any]], *, final: bool) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.object_name if final else self.chunk_object_name,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }

    def response(self) -> dict[str, Any]:
        body = self._envelope(
            [self._final_choice(i, c) for i, c in enumerate(self.choices)], final=True
        )
        body["usage"] = self.usage.body()
        return body

    def usage_chunk(self) -> dict[str, Any]:
        body = self._envelope([], final=False)
        body["usage"] = self.usage.body()
        return body

    def chunk(self, choices: list[dict[str, Any]], include_usage: bool) -> dict[str, Any]:
        body = self._envelope(choices, final=False)
        if include_usage:
            body["usage"] = None
        return body

    # Per endpoint:
    def _final_choice(self, index: int, choice: _Choice) -> dict[str, Any]:
        raise NotImplementedError

    def opening(self) -> list[dict[str, Any]]:
        """Choice deltas sent before any text."""
        return []

    def deltas(self, chunk: Chunk) -> list[dict[str, Any]]:
        raise NotImplementedError


class ChatRenderer(Renderer):
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    def _final_choice(self, index: int, choice: _Choice) -> dict[str, Any]:
        return {
            "index": index,
            "message": {"role": "assistant", "content": "".join(choice.text), "refusal": None},
            "logprobs": _chat_logprobs(choice.logprobs) if self.with_logprobs else None,
            "finish_reason": choice.finish_reason,
        }

    def opening(self) -> list[dict[str, Any]]:
        return [
            {
                "index": i,
                "delta": {"role": "assistant", "content": "", "refusal": None},
                "logprobs": None,
                "finish_reason": None,
            }
            for i in range(self.n)
        ]

    def deltas(self, chunk: Chunk) -> list[dict[str, Any]]:
        out = []
        if chunk.text:
            logprobs = _chat_logprobs(chunk.logprobs) if self.with_logprobs else None
            out.append(
                {
                    "index": chunk.index,
                    "delta": {"content": chunk.text},
                    "logprobs": logprobs,
                    "finish_reason": None,
                }
            )
        if chunk.finish_reason:
            out.append(
                {
                    "index": chunk.index,
                    "delta": {},
                    "logprobs": None,
                    "finish_reason": chunk.finish_reason,
                }
            )
        return out


class CompletionRenderer(Renderer):
    object_name = "text_completion"
    chunk_object_name = "text_completion"
    id_prefix = "cmpl-"

    def _final_choice(self, index: int, choice: _Choice) -> dict[str, Any]:
        logprobs = _completion_logprobs(choice.logprobs, 0) if self.with_logprobs else None
        return {
            "index": index,
            "text": "".join(choice.text),
            "logprobs": logprobs,
            "finish_reason": choice.finish_reason,
        }

    def deltas(self, chunk: Chunk) -> list[dict[str, Any]]:
        if not chunk.text and not chunk.finish_reason:
            return []
        choice = self.choices[chunk.index]
        logprobs = None
        if self.with_logprobs:
            logprobs = _completion_logprobs(chunk.logprobs if chunk.text else (), choice.offset)
        choice.offset += len(chunk.text)
        return [
            {
                "index": chunk.index,
                "text": chunk.text,
                "logprobs": logprobs,
                "finish_reason": chunk.finish_reason,
            }
        ]


def _token(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def _chat_logprobs(tokens: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> dict[str, Any]:
    return {
        "content": [
            {**_token(t.token, t.logprob), "top_logprobs": [_token(a, lp) for a, lp in t.top]}
            for t in tokens
        ],
        "refusal": None,
    }


def _completion_logprobs(
    tokens: list[TokenLogprob] | tuple[TokenLogprob, ...], offset: int
) -> dict[str, Any]:
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [dict(t.top) for t in tokens],
        "text_offset": offsets,
    }
