"""Hugging Face Text Generation Inference (TGI) as an engine.

Completions use TGI's own API, `POST /` with `stream: true` (its documented compat
route, which streams `/generate_stream`'s events: one per token, the last one with
`details`); chat uses its OpenAI-compatible Messages API, `POST /v1/chat/completions`,
so the model's chat template is applied by TGI. Transport, timeouts and HTTP error
mapping are the OpenAI-remote engine's.

What each path takes, read from TGI's router (`GenerateParameters` and `ChatRequest` in
router/src/lib.rs, `ChatRequest::try_into_generate`, router/src/validation.rs), and
what becomes of each field of ours (TGI 3.2 or later for tool calls):

    field                     completions (parameters.*)       chat (Messages API)
    temperature, top_p        0 = do_sample false, then        as given; top_p 1 left out
                              neither; top_p 1 left out        (TGI wants 0 < top_p < 1)
    max_tokens, stop, seed,   max_new_tokens, stop, seed,      as given
    frequency_penalty         frequency_penalty
    logprobs                  top_n_tokens                     logprobs, top_logprobs
    top_k,                    top_k, repetition_penalty        refused: not in ChatRequest
    repetition_penalty        (top_k left out when greedy: TGI
                              samples whenever top_k is set)
    response_format           grammar {"type": "json", "value": schema} (TGI's own shape,
      json_schema             not OpenAI's wrapper)            response_format, same shape
    structured_outputs        grammar {"type": "json"|"regex", "value": ...}
      json | regex                                             response_format, same shape
    tools, tool_choice        -                                tools (a function without
                                                               parameters gets an empty
                                                               object schema), tool_choice
    parallel_tool_calls       -                                honoured as it stands: TGI
                                                               calls at most one tool
    add_special_tokens        true only (TGI adds them)        false only (after templating)

Refused with a 400 naming the field, never dropped: `n > 1` (one choice per request);
`presence_penalty` (TGI's completions have none, and its Messages API turns the value
into a multiplicative repetition_penalty of value + 2); token-id prompts (TGI takes
text); `response_format` json_object (TGI's grammar needs a schema with `properties`,
and an empty one allows only `{}`); structured_outputs other than json or regex; a
grammar together with tools (TGI: "Grammar and tools are mutually exclusive"); an
assistant turn with both text and tool_calls (TGI's Message is one or the other); and
every other option of engines/options.py (logit_bias: TGI's field is an unused list;
echo, suffix, min_p, ...: no such parameter).

TGI's Message has no `tool_call_id`, so it is not sent: TGI makes at most one tool call
per answer, and its templates match a tool's result to the call by order. A tool
call's stream ends without a finish_reason and a whole answer with one says "stop";
both become "tool_calls". TGI reports failures after the headers as stream events:
`{"error", "error_type"}` on the native route, `{"error": {"message",
"http_status_code": 422}}` on the Messages API whatever the cause; validation errors
become InvalidGenerationRequest and "Model is overloaded" EngineOverloaded, as the same
failures do when TGI answers them with a status.

TGI serves text generation only: embeddings (TGI has no pooling; Hugging Face's TEI
is another server) and `/tokenize`, `/detokenize` (TGI's own `/tokenize` speaks
another shape, and it has no detokenize) are refused with a 400 naming the model.

LoRA adapters are those TGI was launched with (`LORA_ADAPTERS=...`), selected per
request by `adapter_id` (completions) or by `model` (Messages API; TGI reads any model
but "tgi" as an adapter id); loading an adapter here makes the gateway route to it, it
does not upload weights to TGI.

TGI is in maintenance mode upstream (Hugging Face recommends vLLM or SGLang for new
deployments); no TGI can run on this CPU-only machine, so the tests speak to a double
that follows TGI's request, response, error and SSE shapes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from engines.errors import (
    EngineError,
    EngineOverloaded,
    EngineUnavailable,
    GenerationFailed,
    InvalidGenerationRequest,
    UnsupportedEndpoint,
    UnsupportedParameter,
)
from engines.openai_remote import OpenAIRemoteConfig, OpenAIRemoteEngine
from engines.openai_wire import EventReader, Reader, finish_reason, openai_body
from engines.options import is_set, refuse_unhonoured
from engines.registry import EngineConfigError
from engines.tasks import API_NAMES
from engines.types import Adapter, Chunk, GenerationRequest, Message, TokenLogprob

ENGINE = "TGI"

NATIVE_OPTIONS = frozenset({"top_k", "repetition_penalty", "response_format", "structured_outputs"})
CHAT_OPTIONS = frozenset(
    {"tools", "tool_choice", "parallel_tool_calls", "response_format", "structured_outputs"}
)
# Options TGI cannot set but always behaves as: honoured at that value, refused otherwise.
NATIVE_FIXED: Mapping[str, Any] = {"add_special_tokens": True}
CHAT_FIXED: Mapping[str, Any] = {"add_special_tokens": False}

NATIVE_HINT = (
    "Beyond the OpenAI sampling fields, TGI's completions take top_k, repetition_penalty, "
    "response_format json_schema and structured_outputs json or regex."
)
CHAT_HINT = (
    "Beyond the OpenAI sampling fields, TGI's Messages API takes tools, tool_choice, "
    "response_format json_schema and structured_outputs json or regex; top_k and "
    "repetition_penalty work on completions only."
)
# The fields of TGI's ChatRequest that openai_body fills from the sampling core.
CHAT_CORE = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "frequency_penalty",
        "logprobs",
        "top_logprobs",
        "stream",
        "stream_options",
    }
)
NO_PARAMETERS = {"type": "object", "properties": {}}
_NO_TOKENIZE = "TGI, which serves it, has no vLLM-style /tokenize and /detokenize"


class TGIEngine(OpenAIRemoteEngine):
    Config = OpenAIRemoteConfig

    def __init__(self, name: str, model_id: str, config: OpenAIRemoteConfig) -> None:
        if set(config.serves) != {"generate"}:
            raise EngineConfigError(
                f"engine {name!r} (tgi): serves must be [generate]; TGI has no embeddings"
            )
        super().__init__(name, model_id, config)

    async def embed(self, body: Mapping[str, Any], adapter: Adapter | None) -> dict[str, Any]:
        raise UnsupportedEndpoint(
            self.model_id, API_NAMES["embeddings"], "TGI, which serves it, has no embeddings"
        )

    async def tokenize(self, body: Mapping[str, Any], adapter: Adapter | None) -> dict[str, Any]:
        raise UnsupportedEndpoint(self.model_id, API_NAMES["tokenize"], _NO_TOKENIZE)

    async def detokenize(self, body: Mapping[str, Any], adapter: Adapter | None) -> dict[str, Any]:
        raise UnsupportedEndpoint(self.model_id, API_NAMES["detokenize"], _NO_TOKENIZE)

    async def load_adapter(self, adapter: Adapter) -> None:
        self._versions[adapter.engine_id] = adapter

    async def unload_adapter(self, adapter: Adapter) -> None:
        self._versions.pop(adapter.engine_id, None)

    async def lost_adapters(self) -> bool:
        """Never: TGI's adapters are those it was launched with, not loaded from here."""
        return False

    async def fitted(self, request: GenerationRequest) -> GenerationRequest:
        """A default max_tokens lowered to what TGI's context leaves after the prompt,
        counted by TGI itself (`/tokenize`; `/chat_tokenize`, templated, for chat): TGI
        refuses `inputs + max_new_tokens > max_total_tokens` where vLLM lowers it."""
        text = request.is_chat or isinstance(request.prompt, str)  # else refused in prepare
        if not (request.fit_max_tokens and request.max_tokens and text):
            return request
        total = await self.context()
        if request.is_chat:
            counted = await self.ask("/chat_tokenize", chat_body(request, "tgi"))
            tokens = counted.get("tokenize_response") if isinstance(counted, dict) else None
        else:
            tokens = await self.ask("/tokenize", {"inputs": request.prompt})
        if not isinstance(tokens, list):
            raise EngineUnavailable(f"{self.root} could not count the prompt: {tokens!r:.200}")
        room = total - len(tokens)
        if 0 < room < request.max_tokens:
            return dataclasses.replace(request, max_tokens=room)
        return request  # room to spare, or a prompt that TGI refuses by itself

    async def read_context(self) -> int:
        """TGI's `max_total_tokens`, from its `/info`."""
        info = await self.ask("/info")
        total = info.get("max_total_tokens") if isinstance(info, dict) else None
        if not isinstance(total, int):
            raise EngineUnavailable(f"{self.root}/info has no max_total_tokens: {info!r:.200}")
        return total

    def prepare(self, request: GenerationRequest) -> tuple[str, dict[str, Any], Reader]:
        if request.n != 1:
            raise UnsupportedParameter("n", ENGINE, "TGI generates one choice per request.")
        if request.presence_penalty:
            raise UnsupportedParameter(
                "presence_penalty",
                ENGINE,
                "TGI has no presence penalty: its Messages API turns the value into a "
                "repetition_penalty of value + 2. Use frequency_penalty.",
            )
        adapter = request.adapter.name if request.adapter is not None else None
        if request.is_chat:
            refuse_unhonoured(
                request, ENGINE, _honoured(request, CHAT_OPTIONS, CHAT_FIXED), CHAT_HINT
            )
            return "/v1/chat/completions", chat_body(request, adapter or "tgi"), ChatReader()
        if not isinstance(request.prompt, str):
            raise UnsupportedParameter(
                "prompt", ENGINE, "TGI takes the prompt as text, not as token ids."
            )
        refuse_unhonoured(
            request, ENGINE, _honoured(request, NATIVE_OPTIONS, NATIVE_FIXED), NATIVE_HINT
        )
        return "/", native_body(request, adapter), NativeReader()

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A whole Messages API answer, a tool call's finish reason said as OpenAI says it."""
        payload = await super().post(path, body)
        for choice in payload["choices"]:
            message = choice.get("message") or {}
            if message.get("tool_calls") and choice.get("finish_reason") in (None, "stop"):
                choice["finish_reason"] = "tool_calls"
        return payload


def _honoured(
    request: GenerationRequest, names: frozenset[str], fixed: Mapping[str, Any]
) -> frozenset[str]:
    return names | {name for name, value in fixed.items() if request.options.get(name) == value}


def native_body(request: GenerationRequest, adapter: str | None) -> dict[str, Any]:
    """The compat route's streaming body. TGI wants temperature > 0 and 0 < top_p < 1
    when given at all, and samples whenever temperature, top_k or top_p is given: greedy
    decoding is `do_sample: false` with none of them."""
    assert isinstance(request.prompt, str)
    options = request.options
    sampling = request.temperature is None or request.temperature > 0
    top_p = request.top_p if sampling and request.top_p is not None and request.top_p < 1 else None
    top_k = options.get("top_k") if sampling and is_set("top_k", options.get("top_k")) else None
    penalty = options.get("repetition_penalty")
    parameters: dict[str, Any] = {
        "do_sample": sampling,
        "details": True,
        "max_new_tokens": request.max_tokens,
        "stop": list(request.stop),
        "seed": request.seed,
        "temperature": request.temperature if sampling else None,
        "top_p": top_p,
        "top_k": top_k,
        "repetition_penalty": penalty if is_set("repetition_penalty", penalty) else None,
        "frequency_penalty": request.frequency_penalty or None,
        "top_n_tokens": request.logprobs or None,
        "grammar": grammar(options),
        "adapter_id": adapter,
    }
    return {
        "inputs": request.prompt,
        "parameters": {k: v for k, v in parameters.items() if v is not None},
        "stream": True,
    }


def chat_body(request: GenerationRequest, model: str) -> dict[str, Any]:
    """The Messages API body: openai_body's core fields TGI reads, the conversation as
    TGI's Message reads it, and the options mapped onto TGI's shapes."""
    _, openai = openai_body(request, model, token_ids=False)
    body = {key: value for key, value in openai.items() if key in CHAT_CORE}
    if request.top_p is not None and request.top_p >= 1:
        del body["top_p"]
    body["messages"] = [tgi_message(m) for m in request.messages]
    options = request.options
    tools = options.get("tools") if is_set("tools", options.get("tools")) else None
    format_ = grammar(options)
    if tools is not None:
        if format_ is not None:
            name = (
                "response_format"
                if is_set("response_format", options.get("response_format"))
                else "structured_outputs"
            )
            raise UnsupportedParameter(
                name, ENGINE, "TGI cannot constrain output and call tools at once."
            )
        body["tools"] = [tgi_tool(tool) for tool in tools]
        if options.get("tool_choice") is not None:
            body["tool_choice"] = options["tool_choice"]
    elif is_set("tool_choice", options.get("tool_choice")):
        raise InvalidGenerationRequest("'tool_choice' needs 'tools'.", param="tool_choice")
    if format_ is not None:
        body["response_format"] = format_
    return body


def tgi_message(message: Message) -> dict[str, Any]:
    """TGI's Message is text (`content`) or `tool_calls`, tried in that order, so an
    assistant turn of tool calls goes without `content`; it has no `tool_call_id`."""
    wire = message.wire()
    wire.pop("tool_call_id", None)
    if message.tool_calls:
        if message.content:
            raise UnsupportedParameter(
                "messages",
                ENGINE,
                "TGI reads an assistant turn as text or as tool_calls, not both.",
            )
        del wire["content"]
    return wire


def tgi_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    """TGI's Tool: `parameters` is required, and `strict` holds anyway (TGI always
    constrains the arguments to the schema with its grammar)."""
    function = tool["function"]
    out: dict[str, Any] = {
        "name": function["name"],
        "parameters": function.get("parameters") or NO_PARAMETERS,
    }
    if function.get("description") is not None:
        out["description"] = function["description"]
    return {"type": "function", "function": out}


def grammar(options: Mapping[str, Any]) -> dict[str, Any] | None:
    """TGI's grammar (`GrammarType`, `{"type": "json"|"regex", "value": ...}`) for the
    request's response_format or structured_outputs; None when neither is set."""
    response_format: dict[str, Any] = options.get("response_format") or {}
    structured: dict[str, Any] = options.get("structured_outputs") or {}
    if is_set("response_format", response_format or None):
        if structured:
            raise UnsupportedParameter(
                "structured_outputs", ENGINE, "Send response_format or structured_outputs."
            )
        schema = None
        if response_format.get("type") == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema")
        if schema is None:
            raise UnsupportedParameter(
                "response_format",
                ENGINE,
                "TGI constrains output to a JSON schema with `properties` (json_schema), "
                "not to any JSON object.",
            )
        return {"type": "json", "value": schema}
    if structured:
        given = {kind: value for kind, value in structured.items() if value not in (None, False)}
        if len(given) == 1 and given.keys() <= {"json", "regex"}:
            ((kind, value),) = given.items()
            return {"type": kind, "value": value}
        raise UnsupportedParameter(
            "structured_outputs",
            ENGINE,
            "TGI's grammars are a JSON schema (json) or a regex, without options.",
        )
    return None


def stream_failure(message: str, kind: str | None = None) -> EngineError:
    """A TGI error event as an engine error. The native route names the kind
    (`error_type`); the Messages API sends only the message, which begins as TGI's
    InferError prints it."""
    if kind == "overloaded" or message == "Model is overloaded":
        return EngineOverloaded(f"TGI is overloaded: {message}")
    if kind == "validation" or message.startswith("Input validation error"):
        return InvalidGenerationRequest(message)
    return GenerationFailed(f"TGI failed mid-stream ({kind or 'generation'}): {message}")


class ChatReader(EventReader):
    """The Messages API's stream: OpenAI chunks, with TGI's error events and its tool
    calls, whose every piece repeats the call's id (the first also names the function,
    the rest carry argument text) and after which no finish_reason comes. The engine's
    pieces carry the id once, as OpenAI's do."""

    def __init__(self) -> None:
        super().__init__(chat=True)
        self.calls: set[int] = set()
        self.finished = False

    def read(self, payload: dict[str, Any]) -> list[Chunk]:
        error = payload.get("error")
        if isinstance(error, dict) and not payload.get("choices"):
            raise stream_failure(str(error.get("message") or error))
        chunks = super().read(payload)
        for i, chunk in enumerate(chunks):
            pieces = tuple(
                dataclasses.replace(d, id=None) if d.index in self.calls else d
                for d in chunk.tool_calls
            )
            self.calls.update(d.index for d in pieces)
            finish = chunk.finish_reason
            self.finished = self.finished or finish is not None
            if self.calls and finish == "stop":
                finish = "tool_calls"
            chunks[i] = dataclasses.replace(chunk, tool_calls=pieces, finish_reason=finish)
        return chunks

    def finish(self) -> list[Chunk]:
        if self.calls and not self.finished:
            return [Chunk(0, "", 0, 0, finish_reason="tool_calls"), *super().finish()]
        return super().finish()


class NativeReader:
    """TGI's stream events: `{"token": {...}, "top_tokens": [...], "details": ...}`;
    the last event carries `details` with the finish reason and the token counts."""

    chat = False

    def __init__(self) -> None:
        self.counted = 0
        self.prompt_tokens = 0
        self.generated = 0

    def read(self, payload: dict[str, Any]) -> list[Chunk]:
        if "error" in payload:
            raise stream_failure(str(payload["error"]), payload.get("error_type", "generation"))
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
