"""The one top-down request flow: resolve the model, consult the cache, pick a
backend, generate, render.

    resolve model → cache plan (gateway/cache/): hit → replay the stored chunks
                                                 same request in flight → follow it
                                                 miss → generate in a flight, store
    generate: pool.acquire (policy, queue) → engine.generate(...) per prompt
    → merge choices → render (JSON body, or SSE events primed with the first chunk
    so that errors raised before any output still get their own HTTP status)
    finally: release the backend slot and tell its breaker how it went

A backend failing before anything reached the client is retried on another backend
of the pool, within `max_attempts` and the pool's retry budget (`retryable`): it was
down, timed out, answered 5xx or 429 (EngineUnavailable), or broke while generating
(GenerationFailed: the engine's fault, not the client's, and another backend may well
answer). The client's own mistake (400) or departure never is. Non-streamed answers
are collected before they are sent, so they are retried whenever their backend fails;
streams only until their first chunk.

Routes hand in plain data (`Call`); nothing here knows about FastAPI.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from engines.base import Engine
from engines.errors import EngineError, EngineTimedOut, EngineUnavailable, GenerationFailed
from engines.types import Chunk, GenerationRequest
from gateway.adapters import AdapterRecord
from gateway.balancer.backend import Backend
from gateway.balancer.policies import RouteKey
from gateway.balancer.pool import Pool
from gateway.cache.flights import Item, Watch
from gateway.cache.responses import ResponseCache, Result
from gateway.engine_set import EngineSet, Route
from gateway.errors import ServiceUnavailable, for_caller, from_engine_error, internal_error
from gateway.openai.render import Renderer
from gateway.resume import NotResumable, Stops, Strand, Transcript, continuation, owed

log = logging.getLogger("switchyard")


@dataclass(slots=True)
class Outcome:
    """What happened to a call, for response headers, metrics and logs; `watch` sees
    every chunk with the time it left the engine (metrics time tokens there)."""

    base: str | None = None
    adapter: str | None = None
    backend: str | None = None
    attempts: int = 0
    queue_wait_s: float = 0.0
    failed_mid_stream: bool = False
    resumes: list[str] = field(default_factory=list)  # each resume's result (_resumed)
    cache: Result = "bypass"
    watch: Watch | None = None


@dataclass(frozen=True, slots=True)
class Call:
    """One OpenAI request, converted: a generation per prompt, and how to render it.
    `scope` keeps cached answers apart (the caller's key or tenant); `cache_control`
    is the request's Cache-Control header."""

    request_id: str
    model: str
    requests: list[GenerationRequest]
    renderer: Renderer
    include_usage: bool = False
    scope: str = ""
    cache_control: str = ""
    outcome: Outcome = field(default_factory=Outcome)
    endpoint: str = ""  # the API's name for metrics and logs; empty: the prompt's kind
    show_backends: bool = False  # error events may tell of backends (an admin asks)

    @property
    def kind(self) -> str:
        """What the engine generates: "chat" (a conversation) or "completions"."""
        return "chat" if self.requests[0].is_chat else "completions"

    @property
    def api(self) -> str:
        """The endpoint the client called: "chat", "completions", "responses"."""
        return self.endpoint or self.kind


async def complete(engines: EngineSet, cache: ResponseCache | None, call: Call) -> dict[str, Any]:
    renderer = call.renderer
    async with contextlib.aclosing(_answer(engines, cache, call, buffered=True)) as chunks:
        async for slot, chunk in chunks:
            renderer.count(chunk, slot)
            renderer.add(chunk)
    await renderer.seal()
    return renderer.response()


async def open_stream(
    engines: EngineSet, cache: ResponseCache | None, call: Call
) -> AsyncGenerator[bytes, None]:
    """SSE events for `call`. Waits for the first chunk before returning, so an engine
    error at submission (bad request, context too long, engine down) is raised here."""
    chunks = _answer(engines, cache, call, buffered=False)
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        first = None
    except BaseException:
        await chunks.aclose()
        raise
    return _events(call, first, chunks)


async def _events(
    call: Call, first: tuple[int, Chunk] | None, chunks: AsyncGenerator[tuple[int, Chunk], None]
) -> AsyncGenerator[bytes, None]:
    """The renderer frames the events; a failure after the first becomes its error
    event (the HTTP status is already sent)."""
    renderer = call.renderer
    usage = call.include_usage
    try:
        for head in renderer.head(usage):
            yield head
        if first is not None:
            async for slot, chunk in _prepend(first, chunks):
                renderer.count(chunk, slot)
                for item in renderer.events(chunk, usage):
                    yield item
        await renderer.seal()
        for tail in renderer.tail(usage):
            yield tail
    except EngineError as exc:
        call.outcome.failed_mid_stream = True
        error = for_caller(from_engine_error(exc), call.request_id, call.show_backends)
        for failure in renderer.failure(error):
            yield failure
    except Exception:
        call.outcome.failed_mid_stream = True
        log.exception("stream %s failed", call.request_id)
        for failure in renderer.failure(internal_error(call.request_id)):
            yield failure
    finally:
        await chunks.aclose()


async def _prepend(
    first: tuple[int, Chunk], rest: AsyncGenerator[tuple[int, Chunk], None]
) -> AsyncGenerator[tuple[int, Chunk], None]:
    yield first
    async for item in rest:
        yield item


async def _answer(
    engines: EngineSet, cache: ResponseCache | None, call: Call, *, buffered: bool
) -> AsyncGenerator[Item, None]:
    """The call's chunks: stored ones, those of an identical generation in flight, or
    its own generation (recorded for the cache when it may be stored)."""
    route = engines.resolve(call.model)
    identity = route.identity()
    plan = None
    if cache is not None:
        plan = cache.plan(identity, call.kind, call.requests, call.scope, call.cache_control)
    if cache is None or plan is None:
        async with contextlib.aclosing(
            _chunks(route, call.requests, call.outcome, buffered)
        ) as chunks:
            async for item in chunks:
                yield item
        return
    outcome = call.outcome
    outcome.base, outcome.adapter = identity.base, identity.adapter
    with _holding(route.adapter):  # counted per request, leaders and followers alike
        entry = await cache.get(plan) if plan.read else None
        if entry is not None:
            outcome.cache = "hit"
            for slot, chunk in entry.chunks:
                if outcome.watch is not None:
                    outcome.watch(chunk, time.perf_counter())
                yield slot, chunk
            return

        def generate(watch: Watch) -> AsyncGenerator[Item, None]:
            generation.watch = watch
            return _chunks(route, call.requests, generation, buffered, hold=False)

        generation = Outcome()
        flight, new = cache.flight(plan, generate, generation)
        outcome.cache = "miss" if new else "hit"
        try:
            async with contextlib.aclosing(flight.follow()) as followed:
                async for slot, chunk, when in followed:
                    outcome.backend = flight.context.backend
                    if outcome.watch is not None:
                        outcome.watch(chunk, when)
                    yield slot, chunk
        finally:
            outcome.backend = flight.context.backend
            if new:
                outcome.attempts = flight.context.attempts
                outcome.queue_wait_s = flight.context.queue_wait_s
                outcome.resumes = flight.context.resumes


@contextlib.contextmanager
def _holding(adapter: AdapterRecord | None) -> Iterator[None]:
    """Count a request on its adapter version, so unloading it drains the request."""
    if adapter is None:
        yield
        return
    adapter.acquire()
    try:
        yield
    finally:
        adapter.release()


async def _chunks(
    route: Route,
    requests: list[GenerationRequest],
    outcome: Outcome,
    buffered: bool,
    hold: bool = True,
) -> AsyncGenerator[Item, None]:
    """(prompt slot, chunk) for every request, with choice indexes made response-wide:
    choice j of prompt i becomes i * n + j, as OpenAI numbers batched completions.

    With `hold`, counts the request in flight on its adapter from the first step to
    the close, so an adapter being unloaded drains it first; callers step it right
    after resolving (no await in between) and always close it. Without, the callers
    hold the adapter themselves (the requests following a cached generation)."""
    adapter = route.adapter
    outcome.base = route.pool.model_id
    outcome.adapter = adapter.adapter.name if adapter else None
    if adapter is not None:
        requests = [dataclasses.replace(r, adapter=adapter.adapter) for r in requests]
    key = route.pool.route_key(outcome.adapter, requests[0])
    placed = adapter.placed if adapter else None
    with _holding(adapter if hold else None):
        async for item in _balanced(route.pool, key, placed, requests, outcome, buffered):
            yield item


async def _balanced(
    pool: Pool,
    key: RouteKey,
    placed: Collection[str] | None,
    requests: list[GenerationRequest],
    outcome: Outcome,
    buffered: bool,
) -> AsyncGenerator[tuple[int, Chunk], None]:
    """The requests' chunks from one backend of `pool`, retried on another while
    nothing was sent; a stream cut after its first chunk is resumed (`_resumed`)."""
    attempts = Attempts(pool)
    transcript = Transcript(requests)
    while True:
        with pool.attempt(retry=bool(attempts.tried)):
            backend = await acquire(pool, key, attempts, placed, outcome)
            failure: BaseException | None = None
            sent = False
            try:
                async with contextlib.aclosing(
                    _watched(_generate(backend.engine, requests), outcome.watch)
                ) as stream:
                    if buffered:
                        items = [item async for item in stream]
                        sent = True
                        for item in items:
                            yield item
                    else:
                        async for item in stream:
                            sent = True
                            transcript.record(item[1])
                            yield item
                return
            except BaseException as exc:
                failure = exc
                if not sent and attempts.again(backend, exc):
                    continue
                if buffered or not sent or not retryable(exc) or not resumes(pool):
                    raise attempts.verdict(exc) from None
                cut = (backend, exc)
            finally:
                pool.release(backend, key.adapter, failure)
        break
    rest = _resumed(pool, key, placed, transcript, cut, attempts, outcome)
    async with contextlib.aclosing(rest) as resumed:
        async for item in resumed:
            yield item


def resumes(pool: Pool) -> bool:
    """Whether streams of `pool`'s model cut by their backend are resumed."""
    settings = pool.settings
    return settings.resume_models.get(pool.model_id, settings.resume)


async def _resumed(
    pool: Pool,
    key: RouteKey,
    placed: Collection[str] | None,
    transcript: Transcript,
    cut: tuple[Backend, EngineUnavailable | GenerationFailed],
    attempts: Attempts,
    outcome: Outcome,
) -> AsyncGenerator[tuple[int, Chunk], None]:
    """The rest of a stream `cut` by its backend, continued on others (gateway/resume.py).
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
            except (TimeoutError, ServiceUnavailable, EngineError) as exc:
                why = f"no backend took it within resume_deadline_s={settings.resume_deadline_s}"
                raise ended(f"{why} ({exc or 'none was free'})", why) from None
            log.warning("stream cut on %s (%s); resuming on %s", cut[0].name, failure, backend.name)
            tried, started = True, False
            failed: BaseException | None = None
            try:
                rest = _continued(backend.engine, transcript, outcome.attempts)
                stream = _watched(rest, outcome.watch)
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
) -> AsyncGenerator[tuple[int, Chunk], None]:
    """The unfinished choices of `transcript`, continued on `engine`, one request each;
    then every prompt's length (the cut stream never got to its usage; the renderer
    counts a prompt once)."""
    strands = transcript.unfinished()
    held = await asyncio.gather(*(owed(engine, strand) for strand in strands))
    streams = [
        _strand(engine, s, Stops.of(s, h), attempt) for s, h in zip(strands, held, strict=True)
    ]
    async with contextlib.aclosing(_merged(streams)) as chunks:
        async for item in chunks:
            yield item
    for strand in list(transcript.strands.values()):
        if strand.prompt_ids is not None:
            yield strand.slot, Chunk(strand.index, "", 0, len(strand.prompt_ids))


async def _strand(
    engine: Engine, strand: Strand, stops: Stops, attempt: int
) -> AsyncGenerator[tuple[int, Chunk], None]:
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
    async with contextlib.aclosing(_to_the_end(engine, request)) as chunks:
        async for chunk in chunks:
            sent += len(chunk.token_ids)
            moved = dataclasses.replace(
                chunk, index=strand.index, prompt_tokens=prompt, prompt_token_ids=None
            )
            yield strand.slot, stops.feed(moved, sent)
            if stops.stopped is not None:
                return  # closing the continuation aborts its generation


def retryable(failure: BaseException) -> TypeGuard[EngineUnavailable | GenerationFailed]:
    """Whether a failure before anything reached the client may go to another backend."""
    return isinstance(failure, EngineUnavailable | GenerationFailed)


@dataclass
class Attempts:
    """One request's attempts on a pool: the backends tried, how each failed, and
    whether it may go on (`retryable`, `max_attempts`, the retry budget)."""

    pool: Pool
    tried: list[Backend] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # "backend: why", in order
    last: EngineUnavailable | GenerationFailed | None = None
    spent: bool = False  # the pool's retry budget refused a retry

    def again(self, backend: Backend, failure: BaseException) -> bool:
        """Whether the request, `failure` on `backend` before any output, gets another
        attempt."""
        if not retryable(failure):
            return False
        self.failures.append(f"{backend.name}: {failure}")
        if not self.pool.may_retry(len(self.tried), failure, backend):
            self.spent = len(self.failures) < self.pool.settings.max_attempts
            return False
        log.warning("backend %s failed (%s); retrying elsewhere", backend.name, failure)
        self.last = failure
        self.tried.append(backend)
        return True

    def verdict(self, failure: BaseException) -> BaseException:
        """What the request ends on: `failure`, or after several attempts the same
        kind of error saying how each went."""
        if not retryable(failure) or (len(self.failures) < 2 and not self.spent):
            return failure
        why = "; ".join(self.failures)
        if self.spent:
            why += " (no retry: the pool's retry budget is spent, too many requests retrying)"
        return type(failure)(f"{len(self.failures)} attempt(s) failed: {why}")


async def acquire(
    pool: Pool,
    key: RouteKey,
    attempts: Attempts,
    placed: Collection[str] | None,
    outcome: Outcome,
    others: bool = False,
) -> Backend:
    """A backend of `pool` for the next attempt (`others`: see Pool.acquire), its wait
    and the attempt counted in `outcome`; when none is left after a failure, the
    attempts' verdict is raised."""
    waiting = time.perf_counter()
    try:
        backend = await pool.acquire(key, attempts.tried, placed, others)
    except ServiceUnavailable:
        if attempts.last is not None:
            raise attempts.verdict(attempts.last) from None
        raise
    finally:
        outcome.queue_wait_s += time.perf_counter() - waiting
    outcome.backend = backend.name
    outcome.attempts += 1
    return backend


async def _watched(
    items: AsyncGenerator[Item, None], watch: Watch | None
) -> AsyncGenerator[tuple[int, Chunk], None]:
    async with contextlib.aclosing(items):
        async for item in items:
            if watch is not None:
                watch(item[1], time.perf_counter())
            yield item


async def _to_the_end(engine: Engine, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
    """The engine's chunks for `request`. An answer that stops before each of its
    choices has a finish_reason was cut (an upstream that closed early, or answered
    something other than OpenAI's stream): the backend failed, as if it had said so."""
    unfinished = set(range(request.n))
    async with contextlib.aclosing(engine.generate(request)) as stream:
        async for chunk in stream:
            if chunk.finish_reason is not None:
                unfinished.discard(chunk.index)
            yield chunk
    if unfinished:
        raise EngineUnavailable("the engine's answer ended before it finished; it was cut")


async def _generate(
    engine: Engine, requests: list[GenerationRequest]
) -> AsyncGenerator[tuple[int, Chunk], None]:
    if len(requests) == 1:  # the hot path: no slot to shift, nothing to merge
        async with contextlib.aclosing(_to_the_end(engine, requests[0])) as stream:
            async for chunk in stream:
                yield 0, chunk
        return
    streams = [_slotted(i, engine, r) for i, r in enumerate(requests)]
    async with contextlib.aclosing(_merged(streams)) as chunks:
        async for item in chunks:
            yield item


async def _slotted(
    slot: int, engine: Engine, request: GenerationRequest
) -> AsyncGenerator[tuple[int, Chunk], None]:
    async with contextlib.aclosing(_to_the_end(engine, request)) as stream:
        async for chunk in stream:
            yield slot, _shift(chunk, slot * request.n)


async def _merged(
    streams: list[AsyncGenerator[tuple[int, Chunk], None]],
) -> AsyncGenerator[tuple[int, Chunk], None]:
    """The items of `streams` as they come; the first failure ends them all."""
    if len(streams) == 1:
        async with contextlib.aclosing(streams[0]) as only:
            async for item in only:
                yield item
        return
    queue: asyncio.Queue[tuple[int, Chunk] | BaseException | None] = asyncio.Queue()

    async def pump(stream: AsyncGenerator[tuple[int, Chunk], None]) -> None:
        try:
            async with contextlib.aclosing(stream):
                async for item in stream:
                    await queue.put(item)
        except Exception as exc:
            await queue.put(exc)
        await queue.put(None)

    tasks = [asyncio.create_task(pump(stream)) for stream in streams]
    try:
        remaining = len(tasks)
        while remaining:
            got = await queue.get()
            if got is None:
                remaining -= 1
            elif isinstance(got, BaseException):
                raise got
            else:
                yield got
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _shift(chunk: Chunk, by: int) -> Chunk:
    return dataclasses.replace(chunk, index=chunk.index + by) if by else chunk
