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
                data = {"object": "list", "data": [{"id": MODEL, "object": "model",
                        "created": 0, "owned_by": "bench", "max_model_len": 4096}]}  # fmt: skip
                return await _json(send, 200, data)
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
        emit = _emitter(send)
        await emit(_chunk({"role": "assistant", "content": ""}))
        for _ in range(tokens):
            if interval_s:
                await asyncio.sleep(interval_s)
            await emit(_chunk({"content": f"{time.monotonic_ns()} "}))
        await emit(_chunk({}, "length"))
        if (request.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens}
            chunk = orjson.loads(_chunk({})[6:])
            await emit(b"data: " + orjson.dumps({**chunk, "choices": [], "usage": usage}) + b"\n\n")
        await emit(b"data: [DONE]\n\n")
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def _emitter(send: Send) -> Any:
    async def emit(data: bytes) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": True})

    return emit


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
