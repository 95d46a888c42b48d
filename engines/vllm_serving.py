"""vLLM's own OpenAI serving layer, run in this process on the engine's `AsyncLLM`.

The in-process engine does not map OpenAI fields onto vLLM one by one: it hands the
request, as the OpenAI body `vllm serve` would receive (`openai_wire.openai_body`),
to vLLM's `OpenAIServingChat` / `OpenAIServingCompletion`. So chat templates (with
`tools`, `chat_template_kwargs`, content parts), structured outputs, forced and auto
tool calls (vLLM's tool parsers), reasoning parsers, the model's generation_config
defaults, `echo`, token-id prompts and every sampling extra behave exactly as behind
`vllm serve`, and so do its validation errors. What comes back is OpenAI JSON: the
engine reads it with the same reader as a remote vLLM's answer.

Failures are vLLM's own verdicts: an `ErrorResponse` or an exception is classified by
vLLM's `create_error_response` and mapped here by status:

    400, 404, 422, 501    → InvalidGenerationRequest (the client's; param kept)
    503                   → EngineUnavailable
    anything else         → GenerationFailed
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from engines.errors import (
    EngineError,
    EngineUnavailable,
    GenerationFailed,
    InvalidGenerationRequest,
    upstream_refusal,
)
from engines.openai_remote import upstream_name
from engines.openai_wire import openai_body
from engines.options import blame_field, refuse_non_text
from engines.types import Adapter, GenerationRequest


@dataclass(frozen=True, slots=True)
class ServingOptions:
    """The `vllm serve` flags that shape answers, with the same names and defaults."""

    chat_template: str | None = None  # a path, or the template itself
    chat_template_content_format: str = "auto"
    tool_parser: str | None = None  # --tool-call-parser; turns on auto tool choice
    tool_strict_level: str = "auto"
    reasoning_parser: str | None = None
    default_chat_template_kwargs: dict[str, Any] = field(default_factory=dict)


class Serving:
    """vLLM's chat and completion servers over one `AsyncLLM`, adapters included."""

    def __init__(self, llm: Any, model_id: str, model_path: str, options: ServingOptions):
        from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
        from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
        from vllm.entrypoints.openai.models.protocol import BaseModelPath
        from vllm.entrypoints.openai.models.serving import OpenAIServingModels
        from vllm.renderers.chat_utils import load_chat_template
        from vllm.renderers.online_renderer import OnlineRenderer

        self.model_id = model_id
        self.multimodal = bool(llm.model_config.is_multimodal_model)
        self.models = OpenAIServingModels(
            engine_client=llm, base_model_paths=[BaseModelPath(model_id, model_path)]
        )
        template = load_chat_template(_template(options.chat_template))
        shared: dict[str, Any] = {
            "request_logger": None,
            "chat_template": template,
            "chat_template_content_format": options.chat_template_content_format,
            "trust_request_chat_template": False,
            "enable_auto_tools": options.tool_parser is not None,
            "exclude_tools_when_tool_choice_none": False,
            "tool_parser": options.tool_parser,
            "tool_strict_level": options.tool_strict_level,
            "reasoning_parser": options.reasoning_parser or "",
            "default_chat_template_kwargs": options.default_chat_template_kwargs or None,
        }
        renderer = OnlineRenderer(
            model_config=llm.model_config,
            renderer=llm.renderer,
            trust_request_mm_kwargs=False,
            log_error_stack=False,
            **shared,
        )
        self.chat = OpenAIServingChat(
            llm, self.models, "assistant", online_renderer=renderer, **shared
        )
        self.completion = OpenAIServingCompletion(
            llm, self.models, online_renderer=renderer, request_logger=None
        )

    def add_adapter(self, adapter: Adapter, lora_request: Any) -> None:
        self.models.lora_requests[upstream_name(adapter)] = lora_request

    def remove_adapter(self, adapter: Adapter) -> None:
        self.models.lora_requests.pop(upstream_name(adapter), None)

    async def answer(
        self, request: GenerationRequest
    ) -> dict[str, Any] | AsyncGenerator[dict[str, Any], None]:
        """The whole answer's JSON, or (incremental requests) its stream events."""
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        if not self.multimodal:
            refuse_non_text(request, "vLLM")
        model = upstream_name(request.adapter) if request.adapter else self.model_id
        _, body = openai_body(request, model)
        try:
            if request.is_chat:
                chat = ChatCompletionRequest.model_validate(body)
                result = await self.chat.create_chat_completion(chat, None)
            else:
                completion = CompletionRequest.model_validate(body)
                result = await self.completion.create_completion(completion, None)
            if isinstance(result, ErrorResponse):
                raise _from_error_response(result)
        except Exception as exc:
            error = exc if isinstance(exc, EngineError) else vllm_error(exc)
            if isinstance(error, InvalidGenerationRequest):
                blame_field(error, request)
            raise error from None
        if isinstance(result, AsyncGenerator):
            return _events(result)
        answer: dict[str, Any] = result.model_dump(mode="json")
        return answer


async def _events(sse: AsyncGenerator[str, None]) -> AsyncGenerator[dict[str, Any], None]:
    """vLLM's SSE strings ("data: {...}\\n\\n") as JSON payloads, until [DONE]."""
    try:
        async for frame in sse:
            data = frame.removeprefix("data: ").strip()
            if data == "[DONE]":
                return
            yield orjson.loads(data)
    finally:
        await sse.aclose()  # aborts the generation if we stop early


def vllm_error(exc: BaseException) -> EngineError:
    """An exception raised inside vLLM's serving code, classified as vLLM's server
    would classify it (a pydantic error on the request body is the client's)."""
    import pydantic
    from vllm.entrypoints.serve.exception_handling.error_response import (
        create_error_response,
    )

    if isinstance(exc, pydantic.ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if not isinstance(p, int))
        return InvalidGenerationRequest(first["msg"].removeprefix("Value error, "), where or None)
    if not isinstance(exc, Exception):
        return GenerationFailed(f"{type(exc).__name__}: {exc}")
    return _from_error_response(create_error_response(exc))


def _from_error_response(response: Any) -> EngineError:
    error = response.error
    if error.code in (400, 404, 422, 501):
        return upstream_refusal(error.message, error.param)
    if error.code == 503:
        return EngineUnavailable(error.message)
    return GenerationFailed(error.message)


def _template(value: str | None) -> str | None:
    """A template path made absolute (vLLM resolves relative paths oddly), or the
    template text itself."""
    if value is None or "{" in value:
        return value
    return str(Path(value).resolve())
