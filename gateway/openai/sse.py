"""Server-sent events: framing, and a response that stops generating on disconnect."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

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


class Hangup:
    """A block cancelled the moment its client goes away, or when `cut()` is called:
    the task running it is cancelled (which aborts what it awaits: a generation
    inside the engine), and the cancellation ends at the block's end, where the code
    after it runs. A cancellation from outside (a server shutting down) goes on
    through. One plain asyncio task watches, and cancels as `asyncio.timeout` does:
    no task group to enter and leave on every request. The watcher is not cancelled
    when the block ends (a cancelled task leaves its error, traceback and frames to
    the garbage collector): it ends by itself once the response is complete, when
    the server tells it the client is done."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._cut = False
        self._over = False  # the block has ended: the watcher cuts nothing any more

    def __enter__(self) -> Hangup:
        task = asyncio.current_task()
        assert task is not None, "a Hangup runs in a task"
        self._task = task
        self._before = task.cancelling()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        self._over = True
        ours = kind is not None and issubclass(kind, asyncio.CancelledError) and self._cut
        return ours and self._task.uncancel() <= self._before

    def cut(self) -> None:
        if not self._cut and not self._over:
            self._cut = True
            self._task.cancel()

    async def _watch(self) -> None:
        await wait_for_disconnect(self._receive)
        self.cut()


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
    what `told` makes of it.

    One send per chunk, whatever number of events it makes. The head goes with the
    first chunk's events (a stream starts once its first chunk is in: no later), and
    the tail's events (usage, `[DONE]`) go together: two writes fewer per stream."""
    head = b"".join(renderer.head(include_usage))
    try:
        async for slot, chunk in chunks:
            renderer.count(chunk, slot)
            events = renderer.events(chunk, include_usage)
            if head:
                yield b"".join([head, *events])
                head = b""
            elif events:
                yield events[0] if len(events) == 1 else b"".join(events)
        await renderer.seal()
        yield b"".join([head, *renderer.tail(include_usage)])
    except Exception as exc:
        yield b"".join([head, *renderer.failure(told(exc))])
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
        with Hangup(receive) as hangup:
            watch = SendWatch(hangup, self.send_timeout_s)
            try:
                await send(
                    {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
                )
                async with contextlib.aclosing(self.body_iterator) as body:
                    async for data in body:
                        watch.sending_since = loop.time()
                        await send({"type": "http.response.body", "body": data, "more_body": True})
                        watch.sending_since = None
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                watch.close()


class SendWatch:
    """Cuts a stream whose client reads nothing for `limit` seconds (none: never),
    while a send waits (`sending_since`) because the socket's buffers are full: one
    loop timer per stream, looking four times a limit, not one per event."""

    def __init__(self, hangup: Hangup, limit: float | None) -> None:
        self.sending_since: float | None = None
        self._hangup = hangup
        self._limit = limit
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._look()

    def _look(self) -> None:
        if self._limit is None:
            return
        since = self.sending_since
        if since is not None and self._loop.time() - since >= self._limit:
            log.warning("a stream's client read nothing for %gs; cut", self._limit)
            self._hangup.cut()
        else:
            self._timer = self._loop.call_later(self._limit / 4, self._look)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None  # uvloop's handle keeps its callback: a cycle through us
