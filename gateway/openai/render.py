"""Engine chunks → OpenAI responses and stream chunks (chat and completions), with
usage, logprobs, tool calls and reasoning as OpenAI's SDK parses them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from engines.types import Chunk, FinishReason, TokenLogprob, ToolCallDelta
from gateway.errors import GatewayError
from gateway.openai.sse import DONE, event


@dataclass(slots=True)
class _ToolCall:
    id: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None
    prompt_logprobs: list[Any] | None = None
    offset: int = 0  # characters emitted so far (completions' text_offset)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, _ToolCall] = field(default_factory=dict)

    def add_tool_calls(self, deltas: tuple[ToolCallDelta, ...]) -> None:
        for delta in deltas:
            call = self.tool_calls.setdefault(delta.index, _ToolCall())
            call.id = call.id or delta.id
            call.name = call.name or delta.name
            call.arguments.append(delta.arguments)


@dataclass(slots=True)
class Usage:
    """OpenAI's usage; `prompt_tokens_details` only where the engine said how much of
    the prompt it had cached (`cached_tokens` None: it did not, as `vllm serve` without
    `--enable-prompt-tokens-details` sends none)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
        if self.cached_tokens is not None:
            body["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return body


class Renderer:
    """Turns the chunks of one request into an OpenAI response or stream events.

    `index` on incoming chunks is already the response-wide choice index. Chunks with
    no text and no finish (the end-of-sequence token) are not shown to clients.

    Whole answers: `add` every chunk, `seal`, `response`. Streams: `head`, `events`
    per chunk, `seal`, `tail`; or `failure` once the stream broke. Both `count` usage.
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
        self._templates: dict[tuple[int, bool], tuple[bytes, bytes]] = {}

    def count(self, chunk: Chunk, prompt_slot: int) -> None:
        """Usage: completion tokens summed; each prompt counted once, from the first
        chunk that knows its length (remote engines say it only at the end)."""
        usage = self.usage
        usage.completion_tokens += chunk.token_count
        if chunk.prompt_tokens and prompt_slot not in self._prompt_seen:
            self._prompt_seen.add(prompt_slot)
            usage.prompt_tokens += chunk.prompt_tokens
            if chunk.cached_tokens is not None:
                usage.cached_tokens = (usage.cached_tokens or 0) + chunk.cached_tokens

    def add(self, chunk: Chunk) -> None:
        choice = self.choices[chunk.index]
        if chunk.text:  # a chunk of no text reports the end-of-sequence token's logprob
            choice.text.append(chunk.text)
            choice.logprobs.extend(chunk.logprobs)
        if chunk.prompt_logprobs is not None:
            choice.prompt_logprobs = chunk.prompt_logprobs
        if chunk.reasoning:
            choice.reasoning.append(chunk.reasoning)
        if chunk.tool_calls:
            choice.add_tool_calls(chunk.tool_calls)
        if chunk.finish_reason:
            choice.finish_reason = chunk.finish_reason
            choice.stop_reason = chunk.stop_reason

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

    async def seal(self) -> None:
        """The answer is whole: called once, before `response` or `tail`."""

    def head(self, include_usage: bool) -> list[bytes]:
        """Events before the first chunk."""
        return [event(self.chunk(self.opening(), include_usage))]

    def events(self, chunk: Chunk, include_usage: bool) -> list[bytes]:
        if self.plain(chunk):
            return [self._text_event(chunk.index, chunk.text, include_usage)]
        return [event(self.chunk([delta], include_usage)) for delta in self.deltas(chunk)]

    def _text_event(self, index: int, text: str, include_usage: bool) -> bytes:
        """The event of a plain chunk, from a template this stream renders once per
        choice: the same bytes `deltas` and `chunk` make, without building them."""
        template = self._templates.get((index, include_usage))
        if template is None:
            whole = event(self.chunk([self.text_delta(index, _MARK)], include_usage))
            before, _, after = whole.rpartition(orjson.dumps(_MARK))  # after id and model
            template = self._templates[(index, include_usage)] = (before, after)
        return template[0] + orjson.dumps(text) + template[1]

    def tail(self, include_usage: bool) -> list[bytes]:
        """Events after the last chunk."""
        return [event(self.usage_chunk()), DONE] if include_usage else [DONE]

    def failure(self, error: GatewayError) -> list[bytes]:
        """Events that end a stream broken after its first event."""
        return [event(error.body()), DONE]

    # Per endpoint:
    def _final_choice(self, index: int, choice: _Choice) -> dict[str, Any]:
        raise NotImplementedError

    def opening(self) -> list[dict[str, Any]]:
        """Choice deltas sent before any text."""
        return []

    def deltas(self, chunk: Chunk) -> list[dict[str, Any]]:
        raise NotImplementedError

    def plain(self, chunk: Chunk) -> bool:
        """Whether `deltas(chunk)` is the one `text_delta` of its text: most chunks."""
        return False

    def text_delta(self, index: int, text: str) -> dict[str, Any]:
        raise NotImplementedError


_MARK = "\x00switchyard-text\x00"  # where a template's text goes; JSON-escaped, unique


class ChatRenderer(Renderer):
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    def _final_choice(self, index: int, choice: _Choice) -> dict[str, Any]:
        text = "".join(choice.text)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text if text or not choice.tool_calls else None,
            "refusal": None,
        }
        if choice.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": "".join(call.arguments)},
                }
                for _, call in sorted(choice.tool_calls.items())
            ]
        if choice.reasoning:
            message.update(_reasoning("".join(choice.reasoning)))
        return _stopped(
            {
                "index": index,
                "message": message,
                "logprobs": _chat_logprobs(choice.logprobs) if self.with_logprobs else None,
                "finish_reason": choice.finish_reason,
            },
            choice.stop_reason,
        )

    def response(self) -> dict[str, Any]:
        """vLLM's `prompt_logprobs`, where asked for, at the top level: one prompt."""
        body = super().response()
        found = next((c.prompt_logprobs for c in self.choices if c.prompt_logprobs), None)
        if found is not None:
            body["prompt_logprobs"] = found
        return body

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

    def plain(self, chunk: Chunk) -> bool:
        return bool(
            chunk.text
            and not (chunk.reasoning or chunk.tool_calls or chunk.finish_reason)
            and not self.with_logprobs
        )

    def text_delta(self, index: int, text: str) -> dict[str, Any]:
        return {"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None}

    def deltas(self, chunk: Chunk) -> list[dict[str, Any]]:
        out = []
        delta: dict[str, Any] = {}
        if chunk.reasoning:
            delta.update(_reasoning(chunk.reasoning))
        if chunk.text:
            delta["content"] = chunk.text
        if chunk.tool_calls:
            delta["tool_calls"] = [_tool_call_delta(t) for t in chunk.tool_calls]
        if delta:
            logprobs = None
            if self.with_logprobs and chunk.text:
                logprobs = _chat_logprobs(chunk.logprobs)
            out.append(
                {"index": chunk.index, "delta": delta, "logprobs": logprobs, "finish_reason": None}
            )
        if chunk.finish_reason:
            finish = {
                "index": chunk.index,
                "delta": {},
                "logprobs": None,
                "finish_reason": chunk.finish_reason,
            }
            out.append(_stopped(finish, chunk.stop_reason))
        return out


class CompletionRenderer(Renderer):
    object_name = "text_completion"
    chunk_object_name = "text_completion"
    id_prefix = "cmpl-"

    def _final_choice(self, index: int, choice: _Choice) -> dict[str, Any]:
        logprobs = _completion_logprobs(choice.logprobs, 0) if self.with_logprobs else None
        body = {
            "index": index,
            "text": "".join(choice.text),
            "logprobs": logprobs,
            "finish_reason": choice.finish_reason,
        }
        if choice.prompt_logprobs is not None:  # per choice: a batch has several prompts
            body["prompt_logprobs"] = choice.prompt_logprobs
        return _stopped(body, choice.stop_reason)

    def plain(self, chunk: Chunk) -> bool:
        return bool(
            chunk.text
            and not chunk.finish_reason
            and chunk.stop_reason is None
            and not self.with_logprobs
        )

    def text_delta(self, index: int, text: str) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": None}

    def deltas(self, chunk: Chunk) -> list[dict[str, Any]]:
        if not chunk.text and not chunk.finish_reason:
            return []
        choice = self.choices[chunk.index]
        logprobs = None
        if self.with_logprobs:
            logprobs = _completion_logprobs(chunk.logprobs if chunk.text else (), choice.offset)
        choice.offset += len(chunk.text)
        return [
            _stopped(
                {
                    "index": chunk.index,
                    "text": chunk.text,
                    "logprobs": logprobs,
                    "finish_reason": chunk.finish_reason,
                },
                chunk.stop_reason,
            )
        ]


def _stopped(choice: dict[str, Any], stop_reason: str | int | None) -> dict[str, Any]:
    """vLLM's `stop_reason` (the stop string or token id that ended the choice) beside
    `finish_reason`, where one did; OpenAI's own choices have no such field."""
    if stop_reason is not None:
        choice["stop_reason"] = stop_reason
    return choice


def _tool_call_delta(delta: ToolCallDelta) -> dict[str, Any]:
    """OpenAI's shape: the first piece of a call names it, later ones add arguments."""
    function: dict[str, Any] = {"arguments": delta.arguments}
    body: dict[str, Any] = {"index": delta.index}
    if delta.id is not None or delta.name is not None:
        body["id"] = delta.id
        body["type"] = "function"
        function["name"] = delta.name
    body["function"] = function
    return body


def _reasoning(text: str) -> dict[str, str]:
    """Reasoning under vLLM's current name and the one most clients read."""
    return {"reasoning": text, "reasoning_content": text}


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
