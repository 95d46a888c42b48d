"""A TGI double: a small Starlette app that speaks Hugging Face Text Generation
Inference's documented HTTP API, because no TGI can run on this CPU-only machine.

Shapes followed (TGI 2.x/3.x OpenAPI):
- `GET /health` 200; `GET /info` {model_id, max_input_tokens, max_total_tokens, ...}
- `POST /generate_stream` {inputs, parameters{max_new_tokens, do_sample, temperature,
  top_p, seed, stop, top_n_tokens, details, adapter_id, ...}} → SSE events
  `data:{"index", "token": {id, text, logprob, special}, "top_tokens", "generated_text",
  "details"}`; the last event has `generated_text` and `details` {finish_reason:
  length|eos_token|stop_sequence, generated_tokens, input_length, seed}.
- `POST /v1/chat/completions` (Messages API): OpenAI chat chunks, no `n`.
- errors: `{"error": str, "error_type": "validation"|"generation"|"overloaded"}` with
  422 / 424 / 429; a failure mid-stream is a `data:{"error", "error_type"}` event.

It "generates" by echoing the input's words, prefixed by `[adapter_id]` when one is
given. `script` (a mutable dict) makes it fail on demand: {"overloaded": True},
{"fail_after": 2}.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MAX_TOTAL_TOKENS = 64


def create_tgi_double(script: dict[str, Any] | None = None) -> Starlette:
    script = script if script is not None else {}
    seen: list[dict[str, Any]] = []

    def error(message: str, kind: str, status: int) -> JSONResponse:
        return JSONResponse({"error": message, "error_type": kind}, status_code=status)

    def words(text: str, adapter: str | None) -> list[str]:
        out = text.split()
        return [f"[{adapter}]", *out] if adapter else out

    async def health(request: Request) -> Response:
        return Response(status_code=200)

    async def info(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "model_id": "tgi-double",
                "max_input_tokens": MAX_TOTAL_TOKENS - 1,
                "max_total_tokens": MAX_TOTAL_TOKENS,
                "version": "3.0.0-double",
            }
        )

    async def generate_stream(request: Request) -> Response:
        body = await request.json()
        seen.append(body)
        if script.get("overloaded"):
            return error("Model is overloaded", "overloaded", 429)
        inputs, params = body.get("inputs"), body.get("parameters") or {}
        if not isinstance(inputs, str) or not inputs:
            return error("`inputs` cannot be empty", "validation", 422)
        if "temperature" in params and not params["temperature"] > 0:
            return error("`temperature` must be strictly positive", "validation", 422)
        if "top_p" in params and not 0 < params["top_p"] < 1:
            return error("`top_p` must be > 0.0 and < 1.0", "validation", 422)
        prompt = inputs.split()
        budget = params.get("max_new_tokens") or 20
        if len(prompt) + budget > MAX_TOTAL_TOKENS:
            return error(
                f"`inputs` tokens + `max_new_tokens` must be <= {MAX_TOTAL_TOKENS}. "
                f"Given: {len(prompt)} `inputs` tokens and {budget} `max_new_tokens`",
                "validation",
                422,
            )
        reply = words(inputs, params.get("adapter_id"))
        top_n = params.get("top_n_tokens")

        async def events() -> AsyncIterator[str]:
            text = ""
            emitted = reply[:budget]
            for i, word in enumerate(emitted):
                if "fail_after" in script and i >= script["fail_after"]:
                    yield _sse({"error": "CUDA out of memory", "error_type": "generation"})
                    return
                piece = word if i == 0 else " " + word
                text += piece
                last = i == len(emitted) - 1
                event: dict[str, Any] = {
                    "index": i,
                    "token": {"id": i, "text": piece, "logprob": -0.5, "special": False},
                    "generated_text": None,
                    "details": None,
                }
                if top_n:
                    event["top_tokens"] = [
                        {"id": 0, "text": piece, "logprob": -0.5, "special": False}
                    ][:top_n]
                yield _sse(event)
                if last:
                    finish = "length" if len(reply) > budget else "eos_token"
                    yield _sse(
                        {
                            "index": i + 1,
                            "token": {"id": 2, "text": "</s>", "logprob": -0.1, "special": True},
                            "generated_text": text,
                            "details": {
                                "finish_reason": finish,
                                "generated_tokens": len(emitted) + 1,
                                "input_length": len(prompt),
                                "seed": params.get("seed"),
                            },
                        }
                    )

        return StreamingResponse(events(), media_type="text/event-stream")

    async def chat(request: Request) -> Response:
        body = await request.json()
        seen.append(body)
        if "n" in body:
            return error("`n` is not supported", "validation", 422)
        if script.get("overloaded"):
            return error("Model is overloaded", "overloaded", 429)
        user = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
        model = body.get("model")
        reply = words(user, model if model != "tgi" else None)[: body.get("max_tokens") or 20]
        usage_wanted = (body.get("stream_options") or {}).get("include_usage")

        def chunk(delta: dict[str, Any], finish: str | None) -> str:
            return _sse(
                {
                    "id": "",
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": "tgi-double",
                    "system_fingerprint": "3.0.0-double",
                    "choices": [
                        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                    ],
                    "usage": None,
                }
            )

        async def events() -> AsyncIterator[str]:
            for i, word in enumerate(reply):
                yield chunk({"role": "assistant", "content": word if i == 0 else " " + word}, None)
            yield chunk({"role": "assistant", "content": ""}, "stop")
            if usage_wanted:
                prompt = sum(len(m["content"].split()) for m in body["messages"])
                usage = {
                    "prompt_tokens": prompt,
                    "completion_tokens": len(reply) + 1,
                    "total_tokens": prompt + len(reply) + 1,
                }
                yield _sse({"object": "chat.completion.chunk", "choices": [], "usage": usage})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/info", info),
            Route("/generate_stream", generate_stream, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
        ]
    )
    app.state.seen = seen
    return app


def _sse(payload: dict[str, Any]) -> str:
    return f"data:{json.dumps(payload)}\n\n"
