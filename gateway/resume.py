"""Resuming a stream its backend cut, from the tokens already relayed, so that the
client sees one uninterrupted answer (the pipeline hands a cut stream to `resumed`).

    a stream breaks after its first chunk (connection lost, an error event, a timeout)
    → each unfinished choice (a `Strand`: its prompt's token ids, the ids and the text
      relayed) becomes a completion of prompt + relayed ids (`continuation`): n = 1,
      max_tokens less what was sent, the same sampling and seed, and `resumed` = the ids
      relayed, which the vLLM plugin uses to advance a seeded sampler past them
    → on another backend of the pool (the adapter loaded there first, as for any request)
    → its text continues the choice after what the cut backend held back and the client
      never got (`owed`: vLLM holds back a possible stop string's start), with stop
      strings matched here across the break by vLLM's rules (`Stops`)

What cannot resume says why (`refusal`), and the stream ends with that error event:
- constrained decoding (`response_format`, `structured_outputs`, a required or named
  `tool_choice`): vLLM advances a grammar over the tokens it samples, never over a
  prompt's, so a continuation would restart the JSON inside the answer;
- tool calls or reasoning parsed from the output: the parser's state stays behind;
- `echo`, beam search; a backend that said no token ids (TGI, a server without vLLM's
  `return_token_ids`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sys
from collections.abc import AsyncGenerator, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from engines.base import Engine, Tokenizer
from engines.errors import EngineError, EngineTimedOut, EngineUnavailable, GenerationFailed
from engines.options import CHAT, is_set
from engines.types import Chunk, GenerationRequest
from gateway.attempts import Attempts, acquire, retryable
from gateway.balancer.backend import Backend
from gateway.balancer.errors import NoBackend
from gateway.balancer.policies import RouteKey
from gateway.balancer.pool import Pool
from gateway.cache.flights import Item, Watch
from gateway.call import Outcome
from gateway.generation import merged, to_the_end, watched

log = logging.getLogger("switchyard")

# Options that only make sense for the first request, or that the continuation
# handles here: a chat's conversation fields (the prompt is token ids now), and stop
# strings (matched across the break by `Stops`).
_DROPPED = CHAT | {"suffix", "add_special_tokens", "truncate_prompt_tokens", "prompt_logprobs"}
_CONSTRAINED = ("response_format", "structured_outputs", "guided_json", "guided_regex",
                "guided_choice", "guided_grammar")  # fmt: skip
# Token ids of the end of a prompt decoded with the relayed ones, so that the first
# relayed token decodes as it did there (a leading space, a multi-byte character).
_CONTEXT = 6


class NotResumable(Exception):
    """Why a cut stream cannot go on elsewhere."""


@dataclass(slots=True)
class Strand:
    """One choice of one prompt, as relayed so far."""

    slot: int  # the prompt's place in the call
    index: int  # the choice's response-wide index
    choice: int  # its place among its prompt's n choices (vLLM seeds it seed + choice)
    request: GenerationRequest
    prompt_ids: tuple[int, ...] | None = None
    output_ids: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)  # what reached the client
    finished: bool = False
    opaque: str = ""  # why its output cannot be continued from its tokens

    def record(self, chunk: Chunk) -> None:
        if chunk.prompt_token_ids is not None:
            self.prompt_ids = chunk.prompt_token_ids
        if chunk.text and not chunk.token_ids:
            self.opaque = "the backend did not say the token ids of its output"
        if chunk.tool_calls or chunk.reasoning:
            self.opaque = "its tool calls or reasoning were being parsed by the cut backend"
        self.output_ids.extend(chunk.token_ids)
        if chunk.text:
            self.text.append(chunk.text)
        if chunk.finish_reason is not None:
            self.finished = True


class Transcript:
    """What a streamed call relayed, per choice: what its resume starts from."""

    def __init__(self, requests: list[GenerationRequest]) -> None:
        self.requests = requests
        self.strands: dict[int, Strand] = {}
        self.prompts: dict[int, tuple[int, ...]] = {}  # by slot: a choice cut before
        # its first chunk has its prompt's ids from a sibling's

    def strand(self, index: int) -> Strand:
        found = self.strands.get(index)
        if found is None:
            n = self.requests[0].n
            slot, choice = divmod(index, n)
            found = self.strands[index] = Strand(slot, index, choice, self.requests[slot])
        if found.prompt_ids is None:
            found.prompt_ids = self.prompts.get(found.slot)
        return found

    def record(self, chunk: Chunk) -> None:
        strand = self.strand(chunk.index)
        strand.record(chunk)
        if strand.prompt_ids is not None:
            self.prompts[strand.slot] = strand.prompt_ids

    def unfinished(self) -> list[Strand]:
        n = self.requests[0].n
        every = (self.strand(i) for i in range(len(self.requests) * n))
        return [s for s in every if not s.finished]

    @property
    def tokens(self) -> int:
        return sum(len(s.output_ids) for s in self.strands.values())

    def refusal(self) -> str | None:
        """Why the unfinished choices cannot be resumed, or None."""
        options = self.requests[0].options
        constrained = [name for name in _CONSTRAINED if is_set(name, options.get(name))]
        if constrained:
            return (
                f"its `{constrained[0]}` constrains decoding, and vLLM advances a grammar "
                "over the tokens it samples only, never over a prompt's: a continuation "
                "would restart the structure inside the answer"
            )
        choice = options.get("tool_choice")
        if is_set("tools", options.get("tools")) and choice != "none":
            return "its tool calls are parsed (and, when required, constrained) by the backend"
        for name in ("echo", "use_beam_search"):
            if is_set(name, options.get(name)):
                return f"`{name}` cannot be continued from tokens"
        for strand in self.unfinished():
            if strand.opaque:
                return strand.opaque
            if strand.prompt_ids is None:
                return "the backend did not say the prompt's token ids"
        return None


def continuation(strand: Strand, attempt: int) -> GenerationRequest:
    """The request that goes on with `strand` where it was cut, as a completion of its
    prompt's and output's token ids (`attempt`: the request's, for a unique id)."""
    original = strand.request
    assert strand.prompt_ids is not None
    sent = len(strand.output_ids)
    options = {k: v for k, v in original.options.items() if k not in _DROPPED}
    if "min_tokens" in options:
        options["min_tokens"] = max(0, int(options["min_tokens"]) - sent)
    options.pop("include_stop_str_in_output", None)
    seed = original.seed
    return dataclasses.replace(
        original,
        request_id=f"{original.request_id}-{attempt}-{strand.index}",
        prompt=(*strand.prompt_ids, *strand.output_ids),
        max_tokens=None if original.max_tokens is None else original.max_tokens - sent,
        n=1,
        stop=(),
        seed=None if seed is None else seed + strand.choice,
        options=options,
        incremental=True,
        resumed=sent,
    )


async def owed(engine: Engine, strand: Strand) -> str:
    """The text of `strand`'s relayed tokens that the client has not got: what the cut
    backend held back (the possible start of a stop string). Decoded by `engine`."""
    if not isinstance(engine, Tokenizer):
        raise NotResumable(f"backend {engine.name!r} cannot decode tokens")
    assert strand.prompt_ids is not None
    context = list(strand.prompt_ids[-_CONTEXT:])
    adapter = strand.request.adapter
    before = await engine.detokenize({"tokens": context}, adapter)
    after = await engine.detokenize({"tokens": context + strand.output_ids}, adapter)
    head, whole = str(before.get("prompt", "")), str(after.get("prompt", ""))
    sent = "".join(strand.text)
    decoded = whole[len(head) :] if whole.startswith(head) else None
    if decoded is None or not decoded.startswith(sent):
        raise NotResumable("the text relayed does not decode from its tokens")
    return decoded[len(sent) :]


@dataclass(slots=True)
class Stops:
    """The stop strings of one resumed choice, matched over the text the client has
    not got yet: the cut backend's held-back text, then the continuation's. vLLM's rules
    (vllm/v1/engine/detokenizer.py: the stop that completes first, ties in list order;
    not before `min_tokens`; the stop's own text kept with `include_stop_str_in_output`),
    and its hold-back: text that may start a stop string waits for what follows."""

    stops: tuple[str, ...]
    include: bool = False
    min_tokens: int = 0
    held: str = ""
    stopped: str | None = None

    @classmethod
    def of(cls, strand: Strand, held: str) -> Stops:
        options: Mapping[str, Any] = strand.request.options
        return cls(
            strand.request.stop,
            bool(options.get("include_stop_str_in_output")),
            int(options.get("min_tokens") or 0),
            held,
        )

    def feed(self, chunk: Chunk, tokens: int) -> Chunk:
        """`chunk` with the text that may go out now; a stop string found ends the
        choice (`stopped`). `tokens`: the choice's output tokens so far."""
        window = self.held + chunk.text
        self.held = ""
        finish, reason = chunk.finish_reason, chunk.stop_reason
        found = self._find(window) if self.stops and tokens > self.min_tokens else None
        if found is not None:
            stop, at = found
            window = window[: at + len(stop)] if self.include else window[:at]
            finish, reason, self.stopped = "stop", stop, stop
        elif finish is None and self.stops and not self.include:
            keep = max(len(s) for s in self.stops) - 1
            if keep:
                window, self.held = window[:-keep], window[-keep:]
        return dataclasses.replace(chunk, text=window, finish_reason=finish, stop_reason=reason)

    def _find(self, text: str) -> tuple[str, int] | None:
        best: tuple[str, int] | None = None
        best_end = sys.maxsize
        for stop in self.stops:
            at = text.find(stop)
            if at != -1 and at + len(stop) < best_end:
                best, best_end = (stop, at), at + len(stop)
        return best


def resumes(pool: Pool) -> bool:
    """Whether streams of `pool`'s model cut by their backend are resumed."""
    settings = pool.settings
    return settings.resume_models.get(pool.model_id, settings.resume)


async def resumed(
    pool: Pool,
    key: RouteKey,
    placed: Collection[str] | None,
    transcript: Transcript,
    cut: tuple[Backend, EngineUnavailable | GenerationFailed],
    attempts: Attempts,
    outcome: Outcome,
    watch: Watch | None,
) -> AsyncGenerator[Item, None]:
    """The rest of a stream `cut` by its backend, continued on others.
    Each cut, up to `resume_attempts`, is resumed on a backend not yet tried (waited
    for, if need be) within `resume_deadline_s` from the cut to the continuation's
    first chunk; a continuation that fails before that is a retry, within the deadline
    and the retry budget. Each cut counts once in `outcome.resumes`: resumed, failed
    (tried, nothing went on) or refused (not tried). What cannot go on ends the stream
    with the cut's kind of error, saying why."""
    settings = pool.settings
    backend, failure = cut
    cuts, tried = 1, False
    deadline = asyncio.get_running_loop().time() + settings.resume_deadline_s

    def ended(why: str, public: str | None = None) -> BaseException:
        outcome.resumes.append("failed" if tried else "refused")
        cut = f"The answer was cut after {transcript.tokens} token(s)"
        error = type(failure)(f"{cut} ({failure}) and cannot be resumed: {why}.")
        if isinstance(error, EngineError):
            error.public = f"{cut} and cannot be resumed: {public or why}."
        return error

    while True:
        why = transcript.refusal()
        if why is None and cuts > settings.resume_attempts:
            why = f"resume_attempts={settings.resume_attempts} spent"
        if why is None and not attempts.again(backend, failure):
            why = "the pool's retry budget is spent"
        if why is not None:
            raise ended(why)
        with pool.attempt(retry=True):
            try:
                async with asyncio.timeout_at(deadline):
                    backend = await acquire(pool, key, attempts, placed, outcome, others=True)
            except (TimeoutError, NoBackend, EngineError) as exc:
                why = f"no backend took it within resume_deadline_s={settings.resume_deadline_s}"
                raise ended(f"{why} ({exc or 'none was free'})", why) from None
            log.warning("stream cut on %s (%s); resuming on %s", cut[0].name, failure, backend.name)
            tried, started = True, False
            failed: BaseException | None = None
            try:
                rest = _continued(backend.engine, transcript, outcome.attempts)
                stream = watched(rest, watch)
                async with contextlib.aclosing(stream):
                    try:
                        async with asyncio.timeout_at(deadline):
                            first = await anext(stream, None)
                    except TimeoutError:
                        raise EngineTimedOut(
                            f"{backend.name} sent nothing within resume_deadline_s="
                            f"{settings.resume_deadline_s}"
                        ) from None
                    started = True
                    outcome.resumes.append("resumed")
                    if first is not None:
                        transcript.record(first[1])
                        yield first
                    async for item in stream:
                        transcript.record(item[1])
                        yield item
                return
            except NotResumable as exc:  # found on the backend: refused all the same
                failed, tried = exc, False
                raise ended(str(exc), "no backend can continue it") from None
            except BaseException as exc:
                failed = exc
                if not retryable(exc):
                    raise
                failure = exc
                if started:  # cut again: a new resume, with its own deadline
                    cuts, tried = cuts + 1, False
                    cut = (backend, exc)
                    deadline = asyncio.get_running_loop().time() + settings.resume_deadline_s
            finally:
                pool.release(backend, key.adapter, failed)


async def _continued(
    engine: Engine, transcript: Transcript, attempt: int
) -> AsyncGenerator[Item, None]:
    """The unfinished choices of `transcript`, continued on `engine`, one request each;
    then every prompt's length (the cut stream never got to its usage; the renderer
    counts a prompt once)."""
    strands = transcript.unfinished()
    held = await asyncio.gather(*(owed(engine, strand) for strand in strands))
    streams = [
        _strand(engine, s, Stops.of(s, h), attempt) for s, h in zip(strands, held, strict=True)
    ]
    async with contextlib.aclosing(merged(streams)) as chunks:
        async for item in chunks:
            yield item
    for strand in list(transcript.strands.values()):
        if strand.prompt_ids is not None:
            yield strand.slot, Chunk(strand.index, "", 0, len(strand.prompt_ids))


async def _strand(
    engine: Engine, strand: Strand, stops: Stops, attempt: int
) -> AsyncGenerator[Item, None]:
    """One choice's continuation, as that choice: its index, its prompt's length, its
    stop strings matched across the break."""
    request = continuation(strand, attempt)
    prompt = len(strand.prompt_ids or ())
    sent = len(strand.output_ids)
    if request.max_tokens is not None and request.max_tokens <= 0:
        yield (
            strand.slot,
            stops.feed(Chunk(strand.index, "", 0, prompt, finish_reason="length"), sent),
        )
        return
    async with contextlib.aclosing(to_the_end(engine, request)) as chunks:
        async for _, chunk in chunks:
            sent += len(chunk.token_ids)
            moved = dataclasses.replace(
                chunk, index=strand.index, prompt_tokens=prompt, prompt_token_ids=None
            )
            yield strand.slot, stops.feed(moved, sent)
            if stops.stopped is not None:
                return  # closing the continuation aborts its generation
