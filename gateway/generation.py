"""An engine's chunks for a call's prompts: each generation run to its end, several
merged as they come, their choices numbered response-wide."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator

from engines.base import Engine
from engines.errors import EngineUnavailable
from engines.types import GenerationRequest
from gateway.cache.flights import Item, Watch


def generate(
    engine: Engine, requests: list[GenerationRequest], watch: Watch | None = None
) -> AsyncGenerator[Item, None]:
    """(prompt slot, chunk) for every request on `engine`, each shown to `watch` with
    the time it left the engine, and with choice indexes made response-wide: choice j
    of prompt i becomes i * n + j, as OpenAI numbers batched completions. One request
    (the hot path) is one generator between the engine's and the caller."""
    if len(requests) == 1:
        return to_the_end(engine, requests[0], 0, watch)
    return merged([to_the_end(engine, r, i, watch) for i, r in enumerate(requests)])


async def to_the_end(
    engine: Engine, request: GenerationRequest, slot: int = 0, watch: Watch | None = None
) -> AsyncGenerator[Item, None]:
    """The engine's chunks for `request` in prompt slot `slot` (as `generate` numbers
    them), each shown to `watch`. An answer that stops before each of its choices has
    a finish_reason was cut (an upstream that closed early, or answered something
    other than OpenAI's stream): the backend failed, as if it had said so."""
    unfinished = set(range(request.n))
    shift = slot * request.n
    async with contextlib.aclosing(engine.generate(request)) as stream:
        async for chunk in stream:
            if chunk.finish_reason is not None:
                unfinished.discard(chunk.index)
            if shift:
                chunk = dataclasses.replace(chunk, index=chunk.index + shift)
            if watch is not None:
                watch(chunk, time.perf_counter())
            yield slot, chunk
    if unfinished:
        raise EngineUnavailable("the engine's answer ended before it finished; it was cut")


async def merged(streams: list[AsyncGenerator[Item, None]]) -> AsyncGenerator[Item, None]:
    """The items of `streams` as they come; the first failure ends them all."""
    if len(streams) == 1:
        async with contextlib.aclosing(streams[0]) as only:
            async for item in only:
                yield item
        return
    queue: asyncio.Queue[Item | BaseException | None] = asyncio.Queue()

    async def pump(stream: AsyncGenerator[Item, None]) -> None:
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


async def watched(
    items: AsyncGenerator[Item, None], watch: Watch | None
) -> AsyncGenerator[Item, None]:
    """`items`, each shown to `watch` with the time it left the engine."""
    async with contextlib.aclosing(items):
        async for item in items:
            if watch is not None:
                watch(item[1], time.perf_counter())
            yield item
