"""A fast scripted OpenAI-compatible upstream for the overhead benchmark: raw ASGI on
uvicorn (no framework), canned answers of `max_tokens` tokens.

Each streamed content token is the upstream's `time.monotonic_ns()` when it sent the
chunk (plus a space), so a client on the same machine can time every chunk from the
moment it left the upstream. `--interval-ms` spaces the chunks.

    python -m gateway.bench.upstream --port 8801 [--interval-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import uvicorn

MODEL = "scripted"
Send = Any


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-upstream",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


def app_for(interval_s: float) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        path = scope["path"]
        if scope["method"] == "GET":
            if path == "/v1/models":
                return await _json(send, 200, models())
            return await _json(send, 200 if path == "/health" else 404, {})
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = orjson.loads(body)
        tokens = int(request.get("max_tokens") or 16)
        if not request.get("stream"):
            text = " ".join(f"w{i}" for i in range(tokens))
            return await _json(send, 200, _completion(text, tokens))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})  # fmt: skip
        usage = bool((request.get("stream_options") or {}).get("include_usage"))
        async for data in events(tokens, usage, interval_s):
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


async def events(
    tokens: int, usage: bool, interval_s: float = 0.0, text: Callable[[int], str] | None = None
) -> AsyncIterator[bytes]:
    """A streamed answer's SSE events: the role, `tokens` texts (`interval_s` apart;
    token i says `text(i)`, by default the time it is sent), the finish, the usage if
    asked for, [DONE]."""
    yield _chunk({"role": "assistant", "content": ""})
    for i in range(tokens):
        if interval_s:
            await asyncio.sleep(interval_s)
        yield _chunk({"content": text(i) if text else f"{time.monotonic_ns()} "})
    yield _chunk({}, "length")
    if usage:
        counts = {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens}
        chunk = orjson.loads(_chunk({})[6:])
        yield b"data: " + orjson.dumps({**chunk, "choices": [], "usage": counts}) + b"\n\n"
    yield b"data: [DONE]\n\n"


def recorded(stream: bool, tokens: int) -> bytes:
    """The whole body this upstream answers a chat completion of `tokens` (a stream
    with its usage, as gateways ask), token i saying "wi": what a static server
    (nginx in `bench workers`) can send back as it is."""
    if not stream:
        return orjson.dumps(_completion(" ".join(f"w{i}" for i in range(tokens)), tokens))

    async def collect() -> bytes:
        return b"".join([data async for data in events(tokens, True, text=lambda i: f"w{i} ")])

    return asyncio.run(collect())


def models() -> dict[str, Any]:
    return {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0,
            "owned_by": "bench", "max_model_len": 4096}]}  # fmt: skip


def _completion(text: str, tokens: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-upstream", "object": "chat.completion", "created": 0, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "length", "logprobs": None}],
        "usage": {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens},
    }  # fmt: skip


async def _json(send: Send, status: int, data: Any) -> None:
    body = orjson.dumps(data)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interval-ms", type=float, default=0.0)
    args = parser.parse_args()
    app = app_for(args.interval_ms / 1000)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
