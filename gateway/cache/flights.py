"""Single-flight: identical requests in flight share one generation.

The generation runs in a task of its own, not inside any one request, so a client
that goes away does not cut the answer off for the others; it is cancelled (which
aborts it in the engine) only when every request following it has gone. A follower
gets what was produced so far, then each chunk as it arrives, each with the time it
left the engine (so metrics time tokens where they were made, for every follower).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Generic, TypeVar

from engines.types import Chunk

Item = tuple[int, Chunk]  # (prompt slot, chunk)
Watch = Callable[[Chunk, float], None]
T = TypeVar("T")


class Flight(Generic[T]):
    def __init__(
        self,
        source: Callable[[Watch], AsyncGenerator[Item, None]],
        context: T,
        landed: Callable[[Flight[T]], Awaitable[None]],
        abandoned: Callable[[Flight[T]], None],
    ) -> None:
        """Starts `source(watch)` at once (`watch` is to be called as each chunk leaves
        the engine); `landed` runs after it ended, with or without an error;
        `abandoned` when the last follower left before the end. `context` is the
        caller's, for every follower to see (who generated it, and how)."""
        self.context = context
        self.items: list[Item] = []
        self.error: Exception | None = None
        self.done = False
        self._stamps: list[float] = []
        self._followers = 0
        self._changed = asyncio.Event()
        self._abandoned = abandoned
        self._task = asyncio.create_task(self._run(source(self._stamp), landed))

    async def follow(self) -> AsyncGenerator[tuple[int, Chunk, float], None]:
        """(slot, chunk, time it left the engine), from the first chunk; raises the
        generation's error, if it failed."""
        self._followers += 1
        joined = time.perf_counter()
        try:
            seen = 0
            while True:
                while seen < len(self.items):
                    slot, chunk = self.items[seen]
                    # A buffered attempt is stamped live and listed at its end, after
                    # the stamps of any failed attempt before it: the last ones match.
                    when = self._stamps[len(self._stamps) - len(self.items) + seen]
                    seen += 1
                    yield slot, chunk, max(when, joined)
                if self.done:
                    if self.error is not None:
                        raise self.error
                    return
                await self._changed.wait()
        finally:
            self._followers -= 1
            if not self._followers and not self.done:
                self._task.cancel()
                self._abandoned(self)

    @property
    def followers(self) -> int:
        return self._followers

    def cancel(self) -> None:
        self._task.cancel()

    async def _run(
        self, source: AsyncGenerator[Item, None], landed: Callable[[Flight[T]], Awaitable[None]]
    ) -> None:
        try:
            async with contextlib.aclosing(source):
                async for item in source:
                    self.items.append(item)
                    self._notify()
        except Exception as exc:
            self.error = exc
        finally:
            self.done = True
            self._notify()
        await landed(self)  # not when cancelled: CancelledError went past the finally

    def _stamp(self, chunk: Chunk, when: float) -> None:
        self._stamps.append(when)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
