"""vLLM's own OpenAI serving layer, run in this process on the engine's `AsyncLLM`.

The in-process engine does not map OpenAI fields onto vLLM one by one: it hands the
request, as the OpenAI body `vllm serve` would receive (`openai_wire.openai_body`),
to vLLM's `OpenAIServingChat` / `OpenAIServingCompletion`; embeddings go to its
`ServingEmbedding` (pooling models) and `/tokenize`, `/detokenize` to its
`ServingTokenization`, built as `vllm serve` builds them for the model's tasks. So
chat templates (with `tools`, `chat_template_kwargs`, content parts), structured
outputs, forced and auto tool calls (vLLM's tool parsers), reasoning parsers, the
model's generation_config defaults, `echo`, token-id prompts and every sampling extra
behave exactly as behind `vllm serve`, and so do its validation errors. What comes
back is OpenAI JSON, which the engine reads with the same reader as a remote vLLM's
answer, except for streamed chat answers: those are read from vLLM's outputs
directly, with vLLM's parser (engines/vllm_stream.py), instead of from JSON built
for each token and parsed back.

Failures are vLLM's own verdicts: an `ErrorResponse` or an exception is classified by
vLLM's `create_error_response` and mapped here by status:

    400, 404, 422, 501    → InvalidGenerationRequest (the client's; param kept)
    503                   → EngineUnavailable
    anything else         → GenerationFailed
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pydantic

from engines.errors import (
    EngineError,
    EngineUnavailable,
    GenerationFailed,
    InvalidGenerationRequest,
    upstream_refusal,
)
from engines.openai_remote import upstream_name
from engines.openai_wire import EventReader, openai_body, read_events
from engines.options import blame_field, refuse_non_text
from engines.tasks import GENERATE, require
from engines.types import Adapter, Chunk, GenerationRequest, Task
from engines.vllm_stream import chat_serving_class


@dataclass(frozen=True, slots=True)
class ServingOptions:
    """The `vllm serve` flags that shape answers, with the same names and defaults."""

    chat_template: str | None = None  # a path, or the template itself
    chat_template_content_format: str = "auto"
    tool_parser: str | None = None  # --tool-call-parser; turns on auto tool choice
    tool_strict_level: str = "auto"
    reasoning_parser: str | None = None
    default_chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    enable_prompt_tokens_details: bool = False  # usage.prompt_tokens_details.cached_tokens


class Serving:
    """vLLM's servers over one `AsyncLLM`, adapters included: chat and completions for
    a generating model, embeddings for a pooling one, tokenization for both."""

    def __init__(
        self,
        llm: Any,
        model_id: str,
        model_path: str,
        options: ServingOptions,
        serves: Collection[Task] = GENERATE,
    ) -> None:
        from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
        from vllm.entrypoints.openai.models.protocol import BaseModelPath
        from vllm.entrypoints.openai.models.serving import OpenAIServingModels
        from vllm.entrypoints.pooling.embed.protocol import EmbeddingRequest
        from vllm.entrypoints.pooling.embed.serving import ServingEmbedding
        from vllm.entrypoints.serve.tokenize.protocol import DetokenizeRequest, TokenizeRequest
        from vllm.entrypoints.serve.tokenize.serving import ServingTokenization
        from vllm.renderers.chat_utils import ChatTemplateConfig, load_chat_template
        from vllm.renderers.online_renderer import OnlineRenderer

        self.model_id = model_id
        self.serves = frozenset(serves)
        self.multimodal = bool(llm.model_config.is_multimodal_model)
        defaults = llm.model_config.get_diff_sampling_param()  # the model's generation_config
        self.model_max_tokens: int | None = defaults.get("max_tokens")
        self.max_model_len = int(llm.model_config.max_model_len)
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
        self.chat: Any = None
        self.completion: Any = None
        self.embedding: Any = None
        if "generate" in self.serves:
            details = options.enable_prompt_tokens_details
            self.chat = chat_serving_class()(
                llm,
                self.models,
                "assistant",
                online_renderer=renderer,
                enable_prompt_tokens_details=details,
                **shared,
            )
            self.completion = OpenAIServingCompletion(
                llm,
                self.models,
                online_renderer=renderer,
                request_logger=None,
                enable_prompt_tokens_details=details,
            )
        if "embed" in self.serves:
            templates = ChatTemplateConfig(
                chat_template=template,
                chat_template_content_format=options.chat_template_content_format,
            )
            self.embedding = ServingEmbedding(
                llm, self.models, request_logger=None, chat_template_config=templates
            )
        # vLLM's request bodies (unions of models), validated as its server does.
        self.requests = {
            name: pydantic.TypeAdapter(model)
            for name, model in (
                ("embed", EmbeddingRequest),
                ("tokenize", TokenizeRequest),
                ("detokenize", DetokenizeRequest),
            )
        }
        self.tokenization = ServingTokenization(
            self.models,
            renderer,
            chat_template=template,
            chat_template_content_format=options.chat_template_content_format,
            default_chat_template_kwargs=options.default_chat_template_kwargs or None,
        )

    def add_adapter(self, adapter: Adapter, lora_request: Any) -> None:
        self.models.lora_requests[upstream_name(adapter)] = lora_request

    def remove_adapter(self, adapter: Adapter) -> None:
        self.models.lora_requests.pop(upstream_name(adapter), None)

    async def answer(
        self, request: GenerationRequest
    ) -> dict[str, Any] | AsyncGenerator[Chunk, None]:
        """The whole answer's JSON, or (incremental requests) its stream's chunks;
        closing the stream aborts the generation."""
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        require(
            self.model_id, self.serves, "generate", "chat" if request.is_chat else "completions"
        )
        if not self.multimodal:
            refuse_non_text(request, "vLLM")
        model = upstream_name(request.adapter) if request.adapter else self.model_id
        if request.fit_max_tokens and request.max_tokens:
            # A default no larger than the context (vLLM refuses more), nor than the
            # model's own (its generation_config's max_new_tokens), which `vllm serve`
            # takes for a request without max_tokens; vLLM lowers it to what the
            # prompt leaves.
            bounds = (request.max_tokens, self.max_model_len, self.model_max_tokens)
            fewest = min(b for b in bounds if b)
            request = dataclasses.replace(request, max_tokens=fewest)
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
            if request.is_chat:
                return result  # chunks already (vllm_stream.py)
            return read_events(_events(result), EventReader(chat=False))
        answer: dict[str, Any] = result.model_dump(mode="json")
        return answer

    async def embed(self, body: Mapping[str, Any], adapter: Adapter | None) -> dict[str, Any]:
        """vLLM's `/v1/embeddings` answer for `body`, as JSON."""
        require(self.model_id, self.serves, "embed", "embeddings")
        request = self._validated("embed", body, adapter)
        response = await _served(self.embedding(request, None))
        answer: dict[str, Any] = orjson.loads(response.body)
        return answer

    async def tokenize(self, body: Mapping[str, Any], adapter: Adapter | None) -> dict[str, Any]:
        request = self._validated("tokenize", body, adapter)
        result = await _served(self.tokenization.create_tokenize(request, None))
        return _json(result)

    async def detokenize(self, body: Mapping[str, Any], adapter: Adapter | None) -> dict[str, Any]:
        request = self._validated("detokenize", body, adapter)
        result = await _served(self.tokenization.create_detokenize(request, None))
        return _json(result)

    def _validated(self, kind: str, body: Mapping[str, Any], adapter: Adapter | None) -> Any:
        """`body` as vLLM's request of this kind, naming our model or the adapter; a
        body vLLM refuses is the client's mistake (400)."""
        model = upstream_name(adapter) if adapter else self.model_id
        try:
            return self.requests[kind].validate_python({**body, "model": model})
        except Exception as exc:
            raise vllm_error(exc) from None


async def _served(work: Any) -> Any:
    """Await vLLM's serving call: an ErrorResponse or an exception becomes the engine
    error vLLM's server would have answered with."""
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse

    try:
        result = await work
    except EngineError:
        raise
    except Exception as exc:
        raise vllm_error(exc) from None
    if isinstance(result, ErrorResponse):
        raise _from_error_response(result)
    return result


def _json(result: Any) -> dict[str, Any]:
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
    from vllm.entrypoints.serve.exception_handling.error_response import (
        create_error_response,
    )
    from vllm.v1.engine.exceptions import EngineDeadError

    if isinstance(exc, EngineDeadError):
        return EngineUnavailable(f"the engine died: {exc}")
    if isinstance(exc, pydantic.ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if _field_name(p))
        return InvalidGenerationRequest(first["msg"].removeprefix("Value error, "), where or None)
    if not isinstance(exc, Exception):
        return GenerationFailed(f"{type(exc).__name__}: {exc}")
    return _from_error_response(create_error_response(exc))


def _field_name(part: Any) -> bool:
    """A part of a pydantic error's location that names a field (not a list index,
    nor the tag of a union's branch such as "EmbeddingCompletionRequest")."""
    return isinstance(part, str) and not part[:1].isupper() and "[" not in part


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
