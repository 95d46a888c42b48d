"""The one top-down request flow: resolve the model, pick a backend, generate, render.

    resolve model → pool.acquire (policy, queue) → engine.generate(...) per prompt
    → merge choices → render (JSON body, or SSE events primed with the first chunk
    so that errors raised before any output still get their own HTTP status)
    finally: release the backend slot and tell its breaker how it went

A backend failing before anything reached the client (EngineUnavailable: down, timed
out, 5xx, 429) is retried on another backend of the pool, within `max_attempts` and
the pool's retry budget. Non-streamed answers are collected before they are sent, so
they are retried whenever their backend fails; streams only until their first chunk.

Routes hand in plain data (`Call`); nothing here knows about FastAPI.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from engines.base import Engine
from engines.errors import EngineError, EngineUnavailable
from engines.types import Chunk, GenerationRequest
from gateway.balancer.backend import Backend
from gateway.balancer.policies import RouteKey
from gateway.balancer.pool import Pool
from gateway.engine_set import EngineSet, Route
from gateway.errors import ServiceUnavailable, from_engine_error, internal_error
from gateway.openai.convert import Renderer
from gateway.openai.sse import DONE, event

log = logging.getLogger("switchyard")


@dataclass(slots=True)
class Outcome:
    """What happened to a call, for response headers, metrics and logs; `watch` sees
    every chunk as it leaves the engine (metrics time tokens there)."""

    base: str | None = None
    adapter: str | None = None
    backend: str | None = None
    attempts: int = 0
    queue_wait_s: float = 0.0
    failed_mid_stream: bool = False
    watch: Callable[[Chunk], None] | None = None


@dataclass(frozen=True, slots=True)
class Call:
    """One OpenAI request, converted: a generation per prompt, and how to render it."""

    request_id: str
    model: str
    requests: list[GenerationRequest]
    renderer: Renderer
    include_usage: bool = False
    outcome: Outcome = field(default_factory=Outcome)


async def complete(engines: EngineSet, call: Call) -> dict[str, Any]:
    renderer = call.renderer
    route = engines.resolve(call.model)
    async with contextlib.aclosing(_chunks(route, call, buffered=True)) as chunks:
        async for slot, chunk in chunks:
            renderer.count(chunk, slot)
            renderer.add(chunk)
    return renderer.response()


async def open_stream(engines: EngineSet, call: Call) -> AsyncGenerator[bytes, None]:
    """SSE events for `call`. Waits for the first chunk before returning, so an engine
    error at submission (bad request, context too long, engine down) is raised here."""
    chunks = _chunks(engines.resolve(call.model), call, buffered=False)
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
    renderer = call.renderer
    usage = call.include_usage
    try:
        yield event(renderer.chunk(renderer.opening(), usage))
        if first is not None:
            async for slot, chunk in _prepend(first, chunks):
                renderer.count(chunk, slot)
                for delta in renderer.deltas(chunk):
                    yield event(renderer.chunk([delta], usage))
        if usage:
            yield event(renderer.usage_chunk())
    except EngineError as exc:
        call.outcome.failed_mid_stream = True
        yield event(from_engine_error(exc).body())
    except Exception:
        call.outcome.failed_mid_stream = True
        log.exception("stream %s failed", call.request_id)
        yield event(internal_error(call.request_id).body())
    finally:
        await chunks.aclose()
    yield DONE


async def _prepend(
    first: tuple[int, Chunk], rest: AsyncGenerator[tuple[int, Chunk], None]
) -> AsyncGenerator[tuple[int, Chunk], None]:
    yield first
    async for item in rest:
        yield item


async def _chunks(
    route: Route, call: Call, *, buffered: bool
) -> AsyncGenerator[tuple[int, Chunk], None]:
    """(prompt slot, chunk) for every request, with choice indexes made response-wide:
    choice j of prompt i becomes i * n + j, as OpenAI numbers batched completions.

    Counts the request in flight on its adapter from the first step to the close, so
    an adapter being unloaded drains it first. Callers step it right after resolving
    (no await in between) and always close it."""
    adapter = route.adapter
    requests = call.requests
    call.outcome.base = route.pool.model_id
    call.outcome.adapter = adapter.adapter.name if adapter else None
    if adapter is None:
        key = route.pool.route_key(None, requests[0].prompt)
        async for item in _balanced(route.pool, key, None, requests, call.outcome, buffered):
            yield item
        return
    adapter.acquire()
    try:
        requests = [dataclasses.replace(r, adapter=adapter.adapter) for r in requests]
        key = route.pool.route_key(adapter.adapter.name, requests[0].prompt)
        async for item in _balanced(
            route.pool, key, adapter.placed, requests, call.outcome, buffered
        ):
            yield item
    finally:
        adapter.release()


async def _balanced(
    pool: Pool,
    key: RouteKey,
    placed: Collection[str] | None,
    requests: list[GenerationRequest],
    outcome: Outcome,
    buffered: bool,
) -> AsyncGenerator[tuple[int, Chunk], None]:
    """The requests' chunks from one backend of `pool`, retried on another while
    nothing was sent."""
    tried: list[Backend] = []
    last: EngineUnavailable | None = None
    while True:
        waiting = time.perf_counter()
        try:
            backend = await pool.acquire(key, tried, placed)
        except ServiceUnavailable:
            if last is not None:
                raise last from None
            raise
        finally:
            outcome.queue_wait_s += time.perf_counter() - waiting
        outcome.backend = backend.name
        outcome.attempts += 1
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
                        yield item
            return
        except EngineUnavailable as exc:
            failure = last = exc
            if sent or not pool.may_retry(len(tried)):
                raise
            log.warning("backend %s failed (%s); retrying elsewhere", backend.name, exc)
            tried.append(backend)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            pool.release(backend, key.adapter, failure)


async def _watched(
    items: AsyncGenerator[tuple[int, Chunk], None], watch: Callable[[Chunk], None] | None
) -> AsyncGenerator[tuple[int, Chunk], None]:
    async with contextlib.aclosing(items):
        async for item in items:
            if watch is not None:
                watch(item[1])
            yield item


async def _generate(
    engine: Engine, requests: list[GenerationRequest]
) -> AsyncGenerator[tuple[int, Chunk], None]:
    if len(requests) == 1:
        async with contextlib.aclosing(engine.generate(requests[0])) as stream:
            async for chunk in stream:
                yield 0, chunk
        return
    queue: asyncio.Queue[tuple[int, Chunk] | BaseException | None] = asyncio.Queue()

    async def pump(slot: int, request: GenerationRequest) -> None:
        try:
            async with contextlib.aclosing(engine.generate(request)) as stream:
                async for chunk in stream:
                    await queue.put((slot, _shift(chunk, slot * request.n)))
        except Exception as exc:
            await queue.put(exc)
        await queue.put(None)

    tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(requests)]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _shift(chunk: Chunk, by: int) -> Chunk:
    return dataclasses.replace(chunk, index=chunk.index + by) if by else chunk
