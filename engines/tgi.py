"""Hugging Face Text Generation Inference (TGI) as an engine.

Completions use TGI's own API, `POST /generate_stream` (one SSE event per token, the
last one with `details`); chat uses its OpenAI-compatible Messages API,
`POST /v1/chat/completions`, so the model's chat template is applied by TGI.
Transport, timeouts and error mapping are the OpenAI-remote engine's.

What TGI cannot do is refused with a 400 naming the field, never silently dropped:
several choices per request (`n > 1`), and `presence_penalty` on completions.
LoRA adapters are those TGI was launched with (`LORA_ADAPTERS=...`), selected per
request by `adapter_id` (completions) or by `model` (Messages API); loading an adapter
here makes the gateway route to it, it does not upload weights to TGI.

TGI is in maintenance mode upstream (Hugging Face recommends vLLM or SGLang for new
deployments); no TGI can run on this CPU-only machine, so the tests speak to a double
that follows TGI's documented request, response, error and SSE shapes.
"""

from __future__ import annotations

from typing import Any

from engines.errors import GenerationFailed, UnsupportedParameter
from engines.openai_remote import (
    EventReader,
    OpenAIRemoteConfig,
    OpenAIRemoteEngine,
    Reader,
    finish_reason,
    openai_body,
)
from engines.types import Adapter, Chunk, GenerationRequest, TokenLogprob


class TGIEngine(OpenAIRemoteEngine):
    Config = OpenAIRemoteConfig

    async def load_adapter(self, adapter: Adapter) -> None:
        self._versions[adapter.engine_id] = adapter

    async def unload_adapter(self, adapter: Adapter) -> None:
        self._versions.pop(adapter.engine_id, None)

    def prepare(self, request: GenerationRequest) -> tuple[str, dict[str, Any], Reader]:
        if request.n != 1:
            raise UnsupportedParameter("n", "TGI", "TGI generates one choice per request.")
        adapter = request.adapter.name if request.adapter is not None else None
        if request.is_chat:
            path, body = openai_body(request, adapter or self.config.upstream_model or "tgi")
            del body["n"]
            return path, body, EventReader(chat=True)
        if request.presence_penalty:
            raise UnsupportedParameter(
                "presence_penalty", "TGI", "Its completions API has frequency_penalty only."
            )
        return "/generate_stream", native_body(request, adapter), NativeReader()


def native_body(request: GenerationRequest, adapter: str | None) -> dict[str, Any]:
    """TGI's /generate_stream body. TGI wants temperature > 0 and top_p < 1 when
    given at all: greedy decoding is `do_sample: false` with neither."""
    sampling = request.temperature > 0
    parameters: dict[str, Any] = {
        "do_sample": sampling,
        "details": True,
        "max_new_tokens": request.max_tokens,
        "stop": list(request.stop),
        "seed": request.seed,
        "temperature": request.temperature if sampling else None,
        "top_p": request.top_p if sampling and request.top_p < 1 else None,
        "frequency_penalty": request.frequency_penalty or None,
        "top_n_tokens": request.logprobs or None,
        "adapter_id": adapter,
    }
    assert isinstance(request.prompt, str)
    return {
        "inputs": request.prompt,
        "parameters": {k: v for k, v in parameters.items() if v is not None},
    }


class NativeReader:
    """TGI's stream events: `{"token": {...}, "top_tokens": [...], "details": ...}`;
    the last event carries `details` with the finish reason and the token counts."""

    def __init__(self) -> None:
        self.counted = 0
        self.prompt_tokens = 0
        self.generated = 0

    def read(self, payload: dict[str, Any]) -> list[Chunk]:
        if "error" in payload:
            kind = payload.get("error_type", "generation")
            raise GenerationFailed(f"TGI failed mid-stream ({kind}): {payload['error']}")
        token = payload.get("token") or {}
        text = "" if token.get("special") else str(token.get("text", ""))
        logprobs: tuple[TokenLogprob, ...] = ()
        if "logprob" in token and payload.get("top_tokens") is not None:
            top = tuple((t["text"], float(t["logprob"])) for t in payload["top_tokens"])
            logprobs = (TokenLogprob(text, float(token["logprob"] or 0.0), top),)
        details = payload.get("details")
        finish = None
        if details:
            reason = details.get("finish_reason")
            finish = finish_reason("length" if reason == "length" else "stop")
            self.prompt_tokens = int(details.get("input_length") or 0)
            self.generated = int(details.get("generated_tokens") or 0)
        if not text and finish is None:
            return []
        count = 1 if text else 0
        self.counted += count
        return [Chunk(0, text, count, 0, logprobs if text else (), finish)]

    def finish(self) -> list[Chunk]:
        return [Chunk(0, "", self.generated - self.counted, self.prompt_tokens)]
