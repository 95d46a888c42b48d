"""The one top-down request flow: resolve the model, consult the cache, pick a
backend, generate.

    resolve model → cache plan (gateway/cache/): hit → replay the stored chunks
                                                 same request in flight → follow it
                                                 miss → generate in a flight, store
    generate: pool.acquire (policy, queue) → engine.generate(...) per prompt
    (gateway/generation.py) → (prompt slot, chunk) for the route to render
    finally: release the backend slot and tell its breaker how it went

A backend failing before anything reached the client is retried on another backend
of the pool (gateway/attempts.py). Non-streamed answers are collected before they are
sent, so they are retried whenever their backend fails; streams only until their
first chunk, and a stream cut after that is resumed on another backend
(gateway/resume.py).

Routes hand in plain data (`Call`) and an `Outcome` the flow fills in as it goes
(gateway/call.py); nothing here knows about FastAPI or the wire format.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator, Collection, Iterator
from typing import Any

from engines.types import GenerationRequest
from gateway.adapters import AdapterRecord
from gateway.attempts import Attempts, acquire, retryable
from gateway.balancer.policies import RouteKey
from gateway.balancer.pool import Pool
from gateway.cache.flights import Item, Watch
from gateway.cache.responses import Plan, ResponseCache
from gateway.call import Call, Outcome
from gateway.catalog import Catalog, Route
from gateway.generation import generate
from gateway.resume import Transcript, resumed, resumes


async def complete(
    catalog: Catalog, cache: ResponseCache | None, call: Call, outcome: Outcome
) -> dict[str, Any]:
    """The whole answer to `call`, rendered as its JSON body."""
    renderer = call.renderer
    chunks = _answer(catalog, cache, call, outcome, buffered=True)
    async with contextlib.aclosing(chunks):
        async for slot, chunk in chunks:
            renderer.count(chunk, slot)
            renderer.add(chunk)
    await renderer.seal()
    return renderer.response()


async def stream(
    catalog: Catalog, cache: ResponseCache | None, call: Call, outcome: Outcome
) -> Primed:
    """The chunks of `call` as they come. Waits for the first before returning, so an
    engine error at submission (bad request, context too long, engine down) is
    raised here, while the response's HTTP status can still say it."""
    chunks = _answer(catalog, cache, call, outcome, buffered=False)
    try:
        first = await anext(chunks, None)
    except BaseException:
        await chunks.aclose()
        raise
    return Primed(first, chunks)


class Primed:
    """A stream's chunks, its first already awaited; closing it closes the generation
    behind it, whether it was iterated or not (a client gone before the response
    started)."""

    def __init__(self, first: Item | None, rest: AsyncGenerator[Item, None]) -> None:
        self._first = first
        self._rest = rest

    def __aiter__(self) -> Primed:
        return self

    async def __anext__(self) -> Item:
        first, self._first = self._first, None
        return first if first is not None else await anext(self._rest)

    async def aclose(self) -> None:
        await self._rest.aclose()


def _answer(
    catalog: Catalog,
    cache: ResponseCache | None,
    call: Call,
    outcome: Outcome,
    *,
    buffered: bool,
) -> AsyncGenerator[Item, None]:
    """The call's chunks: stored ones, those of an identical generation in flight, or
    its own generation (recorded for the cache when it may be stored)."""
    route = catalog.resolve(call.model)
    identity = route.identity()
    plan = None
    if cache is not None:
        plan = cache.plan(identity, call.kind, call.requests, call.scope, call.cache_control)
    if cache is None or plan is None:
        return _chunks(route, call.requests, outcome, call.watch, buffered)
    return _cached(cache, plan, route, call, outcome, buffered)


async def _cached(
    cache: ResponseCache,
    plan: Plan,
    route: Route,
    call: Call,
    outcome: Outcome,
    buffered: bool,
) -> AsyncGenerator[Item, None]:
    identity = route.identity()
    outcome.model, outcome.adapter = identity.base, identity.adapter
    watch = call.watch
    with _holding(route.adapter):  # counted per request, leaders and followers alike
        entry = await cache.get(plan) if plan.read else None
        if entry is not None:
            outcome.cache = "hit"
            for slot, chunk in entry.chunks:
                if watch is not None:
                    watch(chunk, time.perf_counter())
                yield slot, chunk
            return

        def source(stamp: Watch) -> AsyncGenerator[Item, None]:
            return _chunks(route, call.requests, generation, stamp, buffered, hold=False)

        generation = Outcome()  # the flight's own: its leader's attempts and resumes
        flight, new = cache.flight(plan, source, generation)
        outcome.cache = "miss" if new else "hit"
        try:
            async with contextlib.aclosing(flight.follow()) as followed:
                async for slot, chunk, when in followed:
                    outcome.backend = flight.context.backend
                    if watch is not None:
                        watch(chunk, when)
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


def _chunks(
    route: Route,
    requests: list[GenerationRequest],
    outcome: Outcome,
    watch: Watch | None,
    buffered: bool,
    hold: bool = True,
) -> AsyncGenerator[Item, None]:
    """(prompt slot, chunk) for every request, each chunk shown to `watch` as it
    leaves the engine.

    With `hold`, counts the request in flight on its adapter from the first step to
    the close, so an adapter being unloaded drains it first; callers step it right
    after resolving (no await in between) and always close it. Without, the callers
    hold the adapter themselves (the requests following a cached generation)."""
    adapter = route.adapter
    outcome.model = route.pool.model_id
    outcome.adapter = adapter.adapter.name if adapter else None
    if adapter is not None:
        requests = [dataclasses.replace(r, adapter=adapter.adapter) for r in requests]
    key = route.pool.route_key(outcome.adapter, requests[0])
    placed = adapter.placed if adapter else None
    balanced = _balanced(route.pool, key, placed, requests, outcome, watch, buffered)
    return _held(adapter, balanced) if adapter is not None and hold else balanced


async def _held(
    adapter: AdapterRecord, items: AsyncGenerator[Item, None]
) -> AsyncGenerator[Item, None]:
    """`items`, the request counted on `adapter` from the first step to the close."""
    with _holding(adapter):
        async with contextlib.aclosing(items):
            async for item in items:
                yield item


async def _balanced(
    pool: Pool,
    key: RouteKey,
    placed: Collection[str] | None,
    requests: list[GenerationRequest],
    outcome: Outcome,
    watch: Watch | None,
    buffered: bool,
) -> AsyncGenerator[Item, None]:
    """The requests' chunks from one backend of `pool`, retried on another while
    nothing was sent; a stream cut after its first chunk is resumed."""
    attempts = Attempts(pool)
    transcript = Transcript(requests)
    while True:
        with pool.attempt(retry=bool(attempts.tried)):
            backend = await acquire(pool, key, attempts, placed, outcome)
            failure: BaseException | None = None
            sent = False
            try:
                own = generate(backend.engine, requests, watch)
                async with contextlib.aclosing(own) as chunks:
                    if buffered:
                        items = [item async for item in chunks]
                        sent = True
                        for item in items:
                            yield item
                    else:
                        async for item in chunks:
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
    rest = resumed(pool, key, placed, transcript, cut, attempts, outcome, watch)
    async with contextlib.aclosing(rest):
        async for item in rest:
            yield item
