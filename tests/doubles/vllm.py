"""A `vllm serve` double: a small Starlette app speaking the few routes of vLLM's
OpenAI server that the openai_remote engine's failure paths need, where a real
`vllm serve` (a minute or two to start on CPU) cannot be made to restart or stall on
cue.

- `GET /health`: 200 with an empty body, as vLLM answers once its engine runs.
- `GET /v1/models`: the served model (with its `max_model_len`) and every
  runtime-loaded adapter (`id` its lora_name, `parent` the base), as vLLM lists them.
- `POST /v1/load_lora_adapter` {lora_name, lora_path}: 200 with a text body; a name
  already loaded is vLLM's 400 "... has already been loaded".
  `POST /v1/unload_lora_adapter` {lora_name}.
- `POST /v1/chat/completions` with `stream: true`: "hello there" in two events, a
  usage event, `[DONE]`; without it, the same answer whole. A max_tokens over
  max_model_len is vLLM's 400 naming it. A model it does not
  serve (an adapter it lost) is vLLM's 404 NotFoundError "The model `x` does not
  exist. Valid aliases: ...".

On cue: `restart()` forgets the adapters, as a restarted server does;
`before_headers_s` waits before answering a chat request at all (not one byte);
`before_first_event_s` sends the headers at once, then waits before the first event;
`frozen` stops answering anything, /health included, as a process under SIGSTOP.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class VLLMServerDouble:
    model: str = "up-model"
    before_headers_s: float = 0.0
    before_first_event_s: float = 0.0
    adapters: dict[str, str] = field(default_factory=dict)  # lora_name → lora_path
    frozen: bool = False
    chats: int = 0  # chat requests received
    max_model_len: int = 2048
    bodies: list[dict[str, Any]] = field(default_factory=list)  # chat bodies received

    def restart(self) -> None:
        self.adapters.clear()

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/health", self._health),
                Route("/v1/models", self._models),
                Route("/v1/load_lora_adapter", self._load, methods=["POST"]),
                Route("/v1/unload_lora_adapter", self._unload, methods=["POST"]),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
            ]
        )

    async def _health(self, request: Request) -> Response:
        await self._thaw()
        return Response(status_code=200)

    async def _thaw(self) -> None:
        while self.frozen:  # noqa: ASYNC110 (set from the test's thread)
            await asyncio.sleep(0.05)

    async def _models(self, request: Request) -> Response:
        base = {"id": self.model, "object": "model", "root": self.model, "parent": None}
        cards = [{**base, "max_model_len": self.max_model_len}]
        cards += [
            {"id": name, "object": "model", "root": path, "parent": self.model}
            for name, path in self.adapters.items()
        ]
        return JSONResponse({"object": "list", "data": cards})

    async def _load(self, request: Request) -> Response:
        body = await request.json()
        name = body["lora_name"]
        if name in self.adapters:
            message = f"The lora adapter '{name}' has already been loaded."
            return _error(400, "BadRequestError", message)
        self.adapters[name] = body["lora_path"]
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    async def _unload(self, request: Request) -> Response:
        self.adapters.pop((await request.json())["lora_name"], None)
        return PlainTextResponse("Success")

    async def _chat(self, request: Request) -> Response:
        self.chats += 1
        body = await request.json()
        self.bodies.append(body)
        if (body.get("max_tokens") or 0) > self.max_model_len:
            message = (
                f"max_tokens={body['max_tokens']} cannot be greater than "
                f"max_model_len={self.max_model_len}. Please request fewer output tokens."
            )
            return _error(400, "BadRequestError", message, param="max_tokens")
        model = body["model"]
        if model != self.model and model not in self.adapters:
            message = f"The model `{model}` does not exist. Valid aliases: {self.model}."
            return _error(404, "NotFoundError", message, param="model")
        await asyncio.sleep(self.before_headers_s)
        await self._thaw()
        if not body.get("stream"):
            return JSONResponse(_whole(model))
        return StreamingResponse(self._events(model), media_type="text/event-stream")

    async def _events(self, model: str) -> AsyncIterator[bytes]:
        await asyncio.sleep(self.before_first_event_s)
        for text, finish in (("hello", None), (" there", "stop")):
            delta = {"role": "assistant", "content": text}
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            yield _event({"object": "chat.completion.chunk", "model": model, "choices": [choice]})
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        yield _event({"object": "chat.completion.chunk", "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"


def _whole(model: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": "hello there"}
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return {"object": "chat.completion", "model": model, "choices": [choice], "usage": usage}


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _error(status: int, kind: str, message: str, param: str | None = None) -> Response:
    error = {"message": message, "type": kind, "param": param, "code": status}
    return JSONResponse({"error": error}, status_code=status)
