"""Server-sent events: framing, and a response that stops generating on disconnect."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc
import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from engines.types import Chunk

if TYPE_CHECKING:
    from gateway.errors import GatewayError
    from gateway.openai.render import Renderer

DONE = b"data: [DONE]\n\n"

log = logging.getLogger("switchyard")


def event(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def typed_event(payload: dict[str, Any]) -> bytes:
    """An event named by its payload's `type`, as the Responses API streams them."""
    name: str = payload["type"]
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the client goes away (the request body must already be read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


@contextlib.asynccontextmanager
async def cancelled_on_disconnect(receive: Receive) -> AsyncIterator[anyio.abc.TaskGroup]:
    """A task group whose body is cancelled the moment the client goes away (which
    aborts whatever it awaits: a generation inside the engine); the cancellation
    ends at the block's end, which the caller tells from the work left undone."""
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await wait_for_disconnect(receive)
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        yield tg
        tg.cancel_scope.cancel()


class Chunks(Protocol):
    """A stream's (prompt slot, chunk) pairs, closed when its events end."""

    def __aiter__(self) -> AsyncIterator[tuple[int, Chunk]]: ...

    async def aclose(self) -> None: ...


async def framed(
    renderer: Renderer,
    chunks: Chunks,
    include_usage: bool,
    told: Callable[[Exception], GatewayError],
) -> AsyncGenerator[bytes, None]:
    """The SSE events of `chunks`, as `renderer` frames them; a failure after the
    first event becomes its error event (the HTTP status is already sent), saying
    what `told` makes of it."""
    try:
        for head in renderer.head(include_usage):
            yield head
        async for slot, chunk in chunks:
            renderer.count(chunk, slot)
            events = renderer.events(chunk, include_usage)
            if events:  # one send per chunk, whatever number of events it makes
                yield events[0] if len(events) == 1 else b"".join(events)
        await renderer.seal()
        for tail in renderer.tail(include_usage):
            yield tail
    except Exception as exc:
        for failure in renderer.failure(told(exc)):
            yield failure
    finally:
        await chunks.aclose()


class Events(Protocol):
    """What a stream sends: events, then closed (an async generator, or one that is
    sure to be told its end even when closed unstarted)."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class EventStreamResponse(Response):
    """Streams `body` as `text/event-stream`, one send per item, without buffering.

    A client disconnect cancels the iteration at once (not at the next write) and the
    iterator is closed, which aborts the generation behind it. So does a client that
    reads nothing for `send_timeout_s` (a send waits while the socket's buffers are
    full): its generation, its backend slot and its key's place are released, and
    its connection is closed unfinished.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        body: Events,
        headers: Mapping[str, str] | None = None,
        send_timeout_s: float | None = None,
    ):
        self.body_iterator = body
        self.send_timeout_s = send_timeout_s
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        sending_since: float | None = None  # while a send waits: when it began

        async with cancelled_on_disconnect(receive) as tg:

            async def watch_sends(limit: float) -> None:
                """Cut a client that reads nothing for `limit` seconds: one timer per
                stream, not one per event."""
                while True:
                    await anyio.sleep(limit / 4)
                    if sending_since is not None and loop.time() - sending_since >= limit:
                        break
                log.warning("a stream's client read nothing for %gs; cut", limit)
                tg.cancel_scope.cancel()

            if self.send_timeout_s is not None:
                tg.start_soon(watch_sends, self.send_timeout_s)
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async with contextlib.aclosing(self.body_iterator) as body:
                async for data in body:
                    sending_since = loop.time()
                    await send({"type": "http.response.body", "body": data, "more_body": True})
                    sending_since = None
            await send({"type": "http.response.body", "body": b"", "more_body": False})
