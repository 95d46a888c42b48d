"""The floor under the gateway's in-process frontend, for `bench frontend`: vLLM's
chat serving, with the engine's chunk path (engines/vllm_stream.py) and the gateway's
SSE rendering and framing (`framed`), behind a bare ASGI app on the same uvicorn, with
the same heap set-up (`freeze_heap`). No gateway around it: no middleware, auth,
limits, pipeline, balancer, resume transcript, metrics or access log. What the gateway
costs beyond this per streamed token is all it could save by doing less of its own
work; what this costs is vLLM's engine client, output processing and detokenization,
its request preparation (validation, chat template, tokenizer) and HTTP, the work
`vllm serve` does too.

Streamed chat completions only; any other POST (the benchmark's readiness probe)
answers 200 once the engine is up.

    python -m gateway.bench.floor --model DIR --served-model-name NAME --port PORT \
        --options JSON   # engines.vllm_local.VLLMConfig fields
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncGenerator
from typing import Any, NoReturn

import orjson
import uvicorn
from starlette.types import Receive, Scope, Send

from engines.vllm_local import VLLMConfig, VLLMEngine
from gateway.app import freeze_heap
from gateway.cache.flights import Item
from gateway.openai.render import ChatRenderer
from gateway.openai.sse import framed

_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class Floor:
    """The ASGI app: one in-process vLLM engine's streamed chat completions."""

    def __init__(self, engine: VLLMEngine) -> None:
        self.engine = engine

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["path"] == "/v1/chat/completions":
            await self._chat(body, send)
        else:
            await _answer(send, 200, b"{}")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # startup
        await self.engine.start()
        freeze_heap()
        await send({"type": "lifespan.startup.complete"})
        await receive()  # shutdown
        await self.engine.aclose()
        await send({"type": "lifespan.shutdown.complete"})

    async def _chat(self, body: bytes, send: Send) -> None:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        request = ChatCompletionRequest.model_validate_json(body)
        if not request.stream:
            error = {"error": {"message": "streamed chat completions only", "code": 400}}
            await _answer(send, 400, orjson.dumps(error))
            return
        serving: Any = self.engine._serving
        chunks = await serving.chat.create_chat_completion(request, None)
        if not isinstance(chunks, AsyncGenerator):  # vLLM's ErrorResponse
            await _answer(send, chunks.error.code, chunks.model_dump_json().encode())
            return
        first = await anext(chunks, None)  # as vLLM's server starts with the first output
        renderer = ChatRenderer(os.urandom(16).hex(), request.model, request.n or 1,
                                bool(request.logprobs))  # fmt: skip
        usage = bool(request.stream_options and request.stream_options.include_usage)
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        async for data in framed(renderer, _after(first, chunks), usage, _fail):
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _after(first: Any, rest: AsyncGenerator[Any, None]) -> AsyncGenerator[Item, None]:
    """The stream's chunks, in prompt slot 0, as `framed` takes them."""
    if first is not None:
        yield 0, first
    async with contextlib.aclosing(rest):
        async for chunk in rest:
            yield 0, chunk


def _fail(exc: Exception) -> NoReturn:
    raise exc  # no error event: the floor's connection just ends


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--options", default="{}", help="VLLMConfig fields, as JSON")
    args = parser.parse_args(argv)
    config = VLLMConfig(**{"model": args.model, **orjson.loads(args.options)})
    engine = VLLMEngine("floor", args.served_model_name, config)
    uvicorn.run(Floor(engine), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
