"""The OpenAI wire format both vLLM paths speak: the request body an engine request
becomes (what `vllm serve` would receive), and the answers coming back, streamed
(`EventReader` over `EventParser`) or whole (`response_chunks`), read into engine chunks.

`openai_remote` sends the body over HTTP; `vllm_serving` hands it to vLLM's serving
classes in-process. Both read the same events with the same code, so the two paths
cannot drift apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncGenerator
from itertools import chain
from typing import Any, Protocol

import orjson

from engines.errors import EngineError, EngineUnavailable, GenerationFailed
from engines.types import (
    FINISH_REASONS,
    Chunk,
    FinishReason,
    GenerationRequest,
    Message,
    TokenLogprob,
    ToolCallDelta,
)

# The `vllm_xargs` key of a resumed generation: how many of its prompt's last tokens
# are its own output (the plugin advances a seeded sampler past them).
RESUMED = "switchyard_resumed"


def openai_body(
    request: GenerationRequest, model: str, token_ids: bool = True
) -> tuple[str, dict[str, Any]]:
    """The OpenAI body for `request`: its options verbatim, then the core fields.
    Incremental requests stream (with usage) and, with `token_ids`, ask for the token
    ids (vLLM's `return_token_ids`; not with `echo`, whose text it empties); whole ones
    do not. A resumed generation tells the switchyard vLLM plugin (engines/vllm_plugin.py)
    how many of its prompt's tokens it sampled already, through `vllm_xargs`."""
    body: dict[str, Any] = {**request.options, "model": model, "n": request.n}
    if request.incremental:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        if token_ids and not request.options.get("echo"):
            body["return_token_ids"] = True
    if request.resumed:
        body["vllm_xargs"] = {**body.get("vllm_xargs", {}), RESUMED: request.resumed}
    optional = {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_tokens": request.max_tokens,
        "stop": list(request.stop) or None,
        "seed": request.seed,
        "presence_penalty": request.presence_penalty or None,
        "frequency_penalty": request.frequency_penalty or None,
    }
    body.update((key, value) for key, value in optional.items() if value is not None)
    prompt = request.prompt
    if not request.is_chat:
        body["prompt"] = prompt if isinstance(prompt, str) else list(prompt)
        if request.logprobs is not None:
            body["logprobs"] = request.logprobs
        return "/v1/completions", body
    body["messages"] = [m.wire() for m in prompt if isinstance(m, Message)]
    if request.logprobs is not None:
        body["logprobs"] = True
        body["top_logprobs"] = request.logprobs
    return "/v1/chat/completions", body


class Reader(Protocol):
    """Turns an upstream's stream events into engine chunks."""

    chat: bool

    def read(self, payload: dict[str, Any]) -> list[Chunk]: ...

    def finish(self) -> list[Chunk]:
        """Chunks owed once the stream ended (e.g. the usage correction)."""
        ...


class EventReader:
    """OpenAI stream chunks (chat or completions) → engine `Chunk`s.

    Completion tokens are counted one per text event (the upstream's logprobs count
    when present) and reconciled with the upstream's final `usage`, which is also the
    only place the prompt's length appears: `finish()` yields that correction."""

    def __init__(self, chat: bool) -> None:
        self.chat = chat
        self.counted = 0
        self.usage: dict[str, Any] | None = None

    def read(self, payload: dict[str, Any]) -> list[Chunk]:
        if payload.get("error") and not payload.get("choices"):
            raise GenerationFailed(f"the upstream failed mid-stream: {error_text(payload)}")
        if payload.get("usage"):
            self.usage = payload["usage"]
        chunks = []
        for choice in payload.get("choices") or ():
            ids = choice.get("token_ids")
            prompt_ids = _token_ids(
                choice.get("prompt_token_ids") or payload.get("prompt_token_ids")
            )
            chunk = _choice_chunk(
                choice, self.chat, whole=False, index=choice.get("index", 0),
                token_ids=None if ids is None else _token_ids(ids),
                prompt_token_ids=prompt_ids or None,
            )  # fmt: skip
            said = chunk.text or chunk.tool_calls or chunk.reasoning or chunk.finish_reason
            if said or chunk.token_ids or prompt_ids:  # the role chunk: the prompt's ids
                self.counted += chunk.token_count
                chunks.append(chunk)
        return chunks

    def finish(self) -> list[Chunk]:
        if self.usage is None:
            return []
        completion = count(self.usage, "completion_tokens")
        prompt = count(self.usage, "prompt_tokens")
        return [Chunk(0, "", completion - self.counted, prompt, cached_tokens=cached(self.usage))]


def response_chunks(payload: dict[str, Any], chat: bool) -> list[Chunk]:
    """A whole OpenAI answer as one chunk per choice; the usage (and, in chat, the
    prompt logprobs) ride on the first."""
    usage = payload.get("usage") or {}
    chunks = [
        _choice_chunk(choice, chat, whole=True, index=choice.get("index", i))
        for i, choice in enumerate(payload.get("choices") or ())
    ]
    if chunks:
        chunks[0] = dataclasses.replace(
            chunks[0],
            token_count=count(usage, "completion_tokens"),
            prompt_tokens=count(usage, "prompt_tokens"),
            cached_tokens=cached(usage),
            prompt_logprobs=_prompt_logprobs(payload) if chat else chunks[0].prompt_logprobs,
        )
    return chunks


MAX_TOKENS = 2**31  # no usage count is larger: one that is, is the upstream's fault


def count(usage: dict[str, Any], name: str) -> int:
    """A token count of the upstream's `usage`: a whole number within reason."""
    value = usage.get(name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_TOKENS:
        raise EngineUnavailable(f"the upstream sent usage {name}={value!r}, which cannot be")
    return value


def cached(usage: dict[str, Any]) -> int | None:
    """`prompt_tokens_details.cached_tokens`, where the upstream says it (vLLM: with
    `--enable-prompt-tokens-details`)."""
    details = usage.get("prompt_tokens_details")
    if not isinstance(details, dict) or details.get("cached_tokens") is None:
        return None
    return count(details, "cached_tokens")


def read_burst(
    reader: Reader, payloads: list[dict[str, Any]]
) -> tuple[list[Chunk], EngineError | None]:
    """The chunks of events that arrived together (`coalesced`), and the failure one
    of them reported: it comes after the chunks of the events before it."""
    chunks: list[Chunk] = []
    for payload in payloads:
        try:
            chunks += reader.read(payload)
        except EngineError as exc:
            return coalesced(chunks), exc
    return coalesced(chunks), None


def coalesced(chunks: list[Chunk]) -> list[Chunk]:
    """`chunks` that arrived together, each choice's consecutive text joined into one
    chunk, as vLLM joins the outputs its reader has not taken yet (its
    RequestOutputCollector): a gateway behind its upstream then sends fewer, larger
    events rather than fall further behind. Tool calls, reasoning, the prompt's ids
    and usage are never joined, nor anything after a choice's end."""
    if len(chunks) < 2:
        return chunks
    out = []
    run = [chunks[0]]  # chunks that join into one
    for chunk in chunks[1:]:
        first, last = run[0], run[-1]
        still_open = last is first or (last.finish_reason is None and last.stop_reason is None)
        if still_open and _open_text(first) and _more_text(chunk) and first.index == chunk.index:
            run.append(chunk)
        else:
            out.append(_joined(run))
            run = [chunk]
    out.append(_joined(run))
    return out


def _joined(run: list[Chunk]) -> Chunk:
    """One chunk for a run of text that `coalesced` joins: one new chunk per run, not
    one per event joined."""
    if len(run) == 1:
        return run[0]
    first, last = run[0], run[-1]
    return Chunk(
        first.index, "".join(c.text for c in run), sum(c.token_count for c in run), 0,
        tuple(chain.from_iterable(c.logprobs for c in run)), last.finish_reason,
        stop_reason=last.stop_reason,
        token_ids=tuple(chain.from_iterable(c.token_ids for c in run)),
        prompt_token_ids=first.prompt_token_ids,
    )  # fmt: skip


def _open_text(chunk: Chunk) -> bool:
    """Text that more text may join: its choice goes on, nothing else rides on it."""
    return bool(chunk.text) and not (
        chunk.finish_reason or chunk.tool_calls or chunk.reasoning or chunk.prompt_tokens
        or chunk.stop_reason is not None or chunk.prompt_logprobs is not None
        or chunk.cached_tokens is not None
    )  # fmt: skip


def _more_text(chunk: Chunk) -> bool:
    """A chunk that only adds text, tokens or its choice's end."""
    return not (
        chunk.tool_calls or chunk.reasoning or chunk.prompt_tokens or chunk.prompt_token_ids
        or chunk.prompt_logprobs is not None or chunk.cached_tokens is not None
    )  # fmt: skip


async def read_events(
    events: AsyncGenerator[dict[str, Any], None], reader: Reader
) -> AsyncGenerator[Chunk, None]:
    """A streamed answer's events as chunks, then what the reader owes at the end.
    Leaving early closes `events` (which aborts the generation)."""
    async with contextlib.aclosing(events) as payloads:
        async for payload in payloads:
            for chunk in reader.read(payload):
                yield chunk
    for chunk in reader.finish():
        yield chunk


def _choice_chunk(
    choice: dict[str, Any],
    chat: bool,
    whole: bool,
    index: int,
    token_ids: tuple[int, ...] | None = None,
    prompt_token_ids: tuple[int, ...] | None = None,
) -> Chunk:
    """One choice of an answer, streamed (chat: its `delta`) or whole (its `message`),
    as a chunk. A streamed one counts its tokens: its `token_ids` where the upstream
    sent them, else its logprobs, else one per event with text; a whole answer's count
    is the caller's to fill from the usage."""
    finish = finish_reason(choice.get("finish_reason"))
    stop = stop_reason(choice)
    calls: tuple[ToolCallDelta, ...] = ()
    reasoning = ""
    prompt_logprobs = None
    if chat:
        part = choice.get("message" if whole else "delta") or {}
        text = part.get("content") or ""
        logprobs = chat_logprobs(choice.get("logprobs"))
        if whole:
            logprobs = _visible(logprobs, text)
        calls = tool_call_deltas(part.get("tool_calls"))
        reasoning = _reasoning(part)
    else:
        logprobs = completion_logprobs(choice.get("logprobs"))
        text = choice.get("text") or ""
        prompt_logprobs = _prompt_logprobs(choice)
    tokens = 0
    if whole:
        pass
    elif token_ids is not None:
        tokens = len(token_ids)
    elif text or calls or reasoning or finish:
        tokens = len(logprobs) or (0 if finish and not text else 1)
    return Chunk(index, text, tokens, 0, logprobs, finish, calls, reasoning, stop,
                 prompt_logprobs, token_ids or (), prompt_token_ids)  # fmt: skip


def _token_ids(value: Any) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, list) else ()


def _visible(logprobs: tuple[TokenLogprob, ...], text: str) -> tuple[TokenLogprob, ...]:
    """The logprobs of the text's tokens: vLLM also reports the end-of-sequence token,
    which is not part of the text (OpenAI's logprobs join to the content)."""
    if logprobs and not text.endswith(logprobs[-1].token):
        return logprobs[:-1]
    return logprobs


def tool_call_deltas(value: Any) -> tuple[ToolCallDelta, ...]:
    if not value:
        return ()
    deltas = []
    for n, call in enumerate(value):
        function = call.get("function") or {}
        deltas.append(
            ToolCallDelta(
                int(call.get("index", n)),
                call.get("id"),
                function.get("name"),
                function.get("arguments") or "",
            )
        )
    return tuple(deltas)


def stop_reason(choice: dict[str, Any]) -> str | int | None:
    value = choice.get("stop_reason")
    return value if isinstance(value, str | int) and not isinstance(value, bool) else None


def _prompt_logprobs(where: dict[str, Any]) -> list[Any] | None:
    """vLLM's prompt logprobs: top level in chat answers, per choice in completions."""
    value = where.get("prompt_logprobs")
    return value if isinstance(value, list) else None


def _reasoning(delta: dict[str, Any]) -> str:
    return str(delta.get("reasoning") or delta.get("reasoning_content") or "")


class EventParser:
    """OpenAI's SSE stream, fed as the bytes arrive: the JSON of each `data:` event,
    as many as the bytes complete, until `[DONE]` (then `done`). Reading whatever has
    arrived and parsing it here costs one read per burst of events, not one per line."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.done = False
        self._pending = b""

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        lines = (self._pending + data if self._pending else data).split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) > self.max_line:
            raise EngineUnavailable(
                f"the upstream sent an event line over {self.max_line} bytes: not OpenAI's stream"
            )
        payloads = []
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                self.done = True
                break
            payloads.append(_event(data))
        return payloads


def _event(data: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        raise EngineUnavailable(f"the upstream sent a malformed event: {data[:200]!r}")
    return payload


def finish_reason(value: Any) -> FinishReason | None:
    """vLLM's finish reason in OpenAI's words, "repetition" as vLLM's own, anything
    unknown as "stop". "abort" is no end of the answer: vLLM stopped the generation
    itself (its server shutting down, generation paused, a fault) and would pass the
    word on; relayed as "stop", a cut answer would read as whole and be cached. It is
    a failure of the engine instead (retried or resumed elsewhere, or an error
    event)."""
    if value is None:
        return None
    if value in FINISH_REASONS:
        return value  # type: ignore[no-any-return]
    if value == "abort":
        raise EngineUnavailable(
            "the engine aborted the generation before its end (shutting down, paused, "
            "or after a fault)"
        )
    return "stop"


def chat_logprobs(value: Any) -> tuple[TokenLogprob, ...]:
    if not value:
        return ()
    return tuple(
        TokenLogprob(
            t["token"],
            float(t["logprob"]),
            tuple((a["token"], float(a["logprob"])) for a in t.get("top_logprobs") or ()),
        )
        for t in value.get("content") or ()
    )


def completion_logprobs(value: Any) -> tuple[TokenLogprob, ...]:
    if not value:
        return ()
    tops = value.get("top_logprobs") or [None] * len(value["tokens"])
    return tuple(
        TokenLogprob(token, float(logprob or 0.0), tuple((top or {}).items()))
        for token, logprob, top in zip(value["tokens"], value["token_logprobs"], tops, strict=False)
    )


def error_text(payload: dict[str, Any]) -> str:
    error = payload.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)
