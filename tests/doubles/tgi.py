"""A TGI double: a small Starlette app that speaks Hugging Face Text Generation
Inference's HTTP API, because no TGI can run on this CPU-only machine.

Shapes followed (TGI 3.2 to 3.3, read from its router: `GenerateParameters`,
`ChatRequest`, `GrammarType`, `ToolChoice` in router/src/lib.rs; `generate_stream` and
`chat_completions` in router/src/server.rs; `ChatState` in router/src/chat.rs;
router/src/validation.rs; router/src/infer/tool_grammar.rs):

- `GET /health` 200; `GET /info` {model_id, max_input_tokens, max_total_tokens, ...}
- `POST /tokenize` {inputs} → [{id, text, start, stop}] (one per word here);
  `POST /chat_tokenize` (a ChatRequest) → {tokenize_response: [...], templated_text}
- `POST /generate_stream` {inputs, parameters{...}}, and `POST /` (the compat route)
  with `stream: true`, → SSE events `data:{"index", "token": {id, text, logprob,
  special}, "top_tokens", "generated_text", "details"}`; the last event has
  `generated_text` and `details` {finish_reason: length|eos_token|stop_sequence,
  generated_tokens, input_length, seed}. `parameters.grammar` is `{"type": "json" |
  "json_object" | "regex" | "json_schema", "value": ...}`; a JSON grammar must be a
  schema with `properties`.
- `POST /v1/chat/completions` (Messages API): OpenAI chat answers, streamed or whole.
  `response_format` is a grammar as above (OpenAI's `{"type": "json_schema",
  "json_schema": ...}` does not deserialize: it has no `value`); `tools` need
  `function.parameters` (or `arguments`); `tool_choice` is "auto" (TGI adds a `no_tool`
  function), "none", "required", a function's name, or `{"type": "function",
  "function": {"name"}}`; grammar and tools together are a tool error.
- A tool call, whole: `message: {"role": "assistant", "tool_calls": [{"id", "type":
  "function", "function": {"description": null, "name", "arguments": "<JSON text>"}}]}`
  with finish_reason "stop". Streamed: deltas `{"role": "assistant", "tool_calls":
  [{"index": 0, "id", "type": "function", "function": {"name", "arguments"}}]}`, the
  first with the name and arguments "{", the rest with name null and the arguments'
  text, and no finish_reason after the last (unless cut by length). Tool-call ids count
  up from the conversation's numeric ids ("0" first).
- Errors: a body that does not deserialize is axum's 422 (text/plain); otherwise
  `{"error": str, "error_type"}` with 422 (validation, tool_error) / 424 (generation) /
  429 (overloaded). Once a stream has begun (validation and overload come after the
  headers) a failure is an event: `data:{"error", "error_type"}` on the native routes,
  `data:{"error": {"message", "http_status_code": 422}}` on the Messages API.

Stricter than TGI on purpose: a field TGI does not know (its serde ignores those) and
`n` are a 422 here, so a field TGI would drop silently fails the tests instead.

It "generates" by echoing the input's words, prefixed by `[adapter_id]` when one is
given; under a JSON grammar, a JSON instance of the schema (every property: its
`const`, first `enum` value, "text", 1, 1.5, true, [] or a nested object); under a
regex grammar, the echo if the regex matches it whole, else a generation error. A
tool is called when forced by name, the first one when "required", and on "auto" the
first whose name the last user message contains (else `no_tool`: TGI then answers as
if there were no tools); the arguments are a JSON instance of its parameters.
Everything received is in `app.state.seen`. `script` (a mutable dict) makes it fail on
demand: {"overloaded": True}, {"fail_after": 2}.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Collection
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

MAX_TOTAL_TOKENS = 64
MAX_STOP_SEQUENCES = 4
MAX_TOP_N_TOKENS = 5

# TGI's GenerateParameters and ChatRequest fields (router/src/lib.rs).
PARAMETERS = frozenset(
    {
        "best_of",
        "temperature",
        "repetition_penalty",
        "frequency_penalty",
        "top_k",
        "top_p",
        "typical_p",
        "do_sample",
        "max_new_tokens",
        "return_full_text",
        "stop",
        "truncate",
        "watermark",
        "details",
        "decoder_input_details",
        "seed",
        "top_n_tokens",
        "grammar",
        "adapter_id",
    }
)
CHAT_FIELDS = frozenset(
    {
        "model",
        "messages",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "max_tokens",
        "max_completion_tokens",
        "presence_penalty",
        "stop",
        "stream",
        "seed",
        "temperature",
        "top_p",
        "tools",
        "tool_prompt",
        "tool_choice",
        "response_format",
        "stream_options",
    }
)
MESSAGE_FIELDS = frozenset({"role", "content", "tool_calls", "name"})
STATUS = {"validation": 422, "tool_error": 422, "generation": 424, "overloaded": 429}


class Rejected(Exception):
    """A body TGI's JSON extractor cannot deserialize: axum answers 422 in plain text."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"Failed to deserialize the JSON body into the target type: {detail}")


class Failed(Exception):
    """TGI's InferError: `kind` is its error_type, the message its Display."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def create_tgi_double(script: dict[str, Any] | None = None) -> Starlette:
    script = script if script is not None else {}
    seen: list[dict[str, Any]] = []

    async def health(request: Request) -> Response:
        return Response(status_code=200)

    async def info(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "model_id": "tgi-double",
                "max_input_tokens": MAX_TOTAL_TOKENS - 1,
                "max_total_tokens": MAX_TOTAL_TOKENS,
                "max_stop_sequences": MAX_STOP_SEQUENCES,
                "version": "3.3.0-double",
            }
        )

    async def generate_stream(request: Request) -> Response:
        body = await request.json()
        seen.append(body)
        try:
            allowed = {"inputs", "parameters"} | ({"stream"} if request.url.path == "/" else set())
            _known(body, allowed, "")
            if request.url.path == "/" and body.get("stream") is not True:
                raise Rejected("the double serves `/` with `stream: true` only")
            params = body.get("parameters") or {}
            _known(params, PARAMETERS, "parameters.")
            grammar = _grammar(params.get("grammar"), "parameters.grammar")
        except Rejected as exc:
            return PlainTextResponse(str(exc), status_code=422)
        inputs = body.get("inputs")
        top_n = params.get("top_n_tokens")
        try:
            if script.get("overloaded"):
                raise Failed("overloaded", "Model is overloaded")
            if not isinstance(inputs, str) or not inputs:
                raise _invalid("`inputs` cannot be empty")
            _validate(params)
            prompt = inputs.split()
            budget = params.get("max_new_tokens") or 20
            if len(prompt) + budget > MAX_TOTAL_TOKENS:
                raise _invalid(_too_long(len(prompt), budget))
            reply = _output(grammar, _words(inputs, params.get("adapter_id")))
        except Failed as exc:
            return _events([_native_error(exc)])

        def events() -> list[str]:
            out, text = [], ""
            emitted = reply[:budget]
            for i, piece in enumerate(emitted):
                if "fail_after" in script and i >= script["fail_after"]:
                    out.append(
                        _native_error(
                            Failed("generation", "Request failed during generation: CUDA OOM")
                        )
                    )
                    return out
                text += piece
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
                out.append(_sse(event))
            finish = "length" if len(reply) > budget else "eos_token"
            out.append(
                _sse(
                    {
                        "index": len(emitted),
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
            )
            return out

        return _events(events())

    async def chat(request: Request) -> Response:
        body = await request.json()
        seen.append(body)
        stream = bool(body.get("stream"))
        if "n" in body:
            return _error(Failed("validation", "`n` is not supported"))
        try:
            _known(body, CHAT_FIELDS, "")
            messages = _messages(body.get("messages"))
            tools = _tools(body.get("tools"))
            choice = _tool_choice(body.get("tool_choice"))
            grammar = _grammar(body.get("response_format"), "response_format")
        except Rejected as exc:
            return PlainTextResponse(str(exc), status_code=422)
        try:  # ChatRequest::try_into_generate: answered with a status, streamed or not
            if grammar is not None and tools is not None:
                raise Failed("tool_error", "Tool error: Grammar and tools are mutually exclusive")
            tool = _pick_tool(tools, choice, messages) if tools is not None else None
        except Failed as exc:
            return _error(exc)
        model = body.get("model")
        usage_wanted = (body.get("stream_options") or {}).get("include_usage")
        budget = body.get("max_tokens") or 20
        try:
            if script.get("overloaded"):
                raise Failed("overloaded", "Model is overloaded")
            _validate(
                {
                    "top_p": body.get("top_p"),
                    "frequency_penalty": body.get("frequency_penalty"),
                    "stop": body.get("stop") or [],
                    "top_n_tokens": body.get("top_logprobs"),
                }
            )
            prompt_tokens = _chat_tokens(messages)
            if prompt_tokens + budget > MAX_TOTAL_TOKENS:
                raise _invalid(_too_long(prompt_tokens, budget))
            user = _last_user_text(messages)
            if tool is not None:
                arguments = _instance(_parameters(tool))
                text = json.dumps(arguments)
                reply = ["{", *_pieces(" " + text[1:])] if arguments else ["{", "}"]
            else:
                reply = _output(grammar, _words(user, model if model != "tgi" else None))
        except Failed as exc:
            if stream:
                return _events([_chat_error(exc), "data: [DONE]\n\n"])
            return _error(exc)
        emitted = reply[:budget]
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(emitted) + 1,
            "total_tokens": prompt_tokens + len(emitted) + 1,
        }
        cut = len(reply) > budget
        call_id = _next_tool_call_id(messages)
        if not stream:
            message: dict[str, Any] = {"role": "assistant", "content": "".join(emitted)}
            if tool is not None:
                call = {
                    "id": call_id,
                    "type": "function",
                    "function": {
                        "description": None,
                        "name": tool["function"]["name"],
                        "arguments": json.dumps(arguments, separators=(",", ":")),
                    },
                }
                message = {"role": "assistant", "tool_calls": [call]}
            choice_ = {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": "length" if cut else "stop",
            }
            return JSONResponse(
                {**_chat_head("chat.completion"), "choices": [choice_], "usage": usage}
            )

        def chunk(delta: dict[str, Any], finish: str | None) -> str:
            choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
            return _sse({**_chat_head("chat.completion.chunk"), "choices": choices, "usage": None})

        out = []
        for i, piece in enumerate(emitted):
            finish = "length" if cut and i == len(emitted) - 1 else None
            if tool is None:
                out.append(chunk({"role": "assistant", "content": piece}, finish))
                continue
            function = {"name": tool["function"]["name"] if i == 0 else None, "arguments": piece}
            call = {"index": 0, "id": call_id, "type": "function", "function": function}
            out.append(chunk({"role": "assistant", "tool_calls": [call]}, finish))
        if tool is None and not cut:
            out.append(chunk({"role": "assistant", "content": ""}, "stop"))
        if usage_wanted:
            out.append(_sse({**_chat_head("chat.completion.chunk"), "choices": [], "usage": usage}))
        out.append("data: [DONE]\n\n")
        return _events(out)

    async def tokenize(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append(body)
        return JSONResponse(_tokens(str(body.get("inputs", ""))))

    async def chat_tokenize(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append(body)
        text = " ".join(_text(m) for m in _messages(body.get("messages")))
        return JSONResponse({"tokenize_response": _tokens(text), "templated_text": text})

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/info", info),
            Route("/tokenize", tokenize, methods=["POST"]),
            Route("/chat_tokenize", chat_tokenize, methods=["POST"]),
            Route("/", generate_stream, methods=["POST"]),
            Route("/generate_stream", generate_stream, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
        ]
    )
    app.state.seen = seen
    return app


# -- request shapes ------------------------------------------------------------------


def _known(body: Any, fields: Collection[str], where: str) -> None:
    if not isinstance(body, dict):
        raise Rejected(f"{where or 'body'}: expected a map")
    for key in body:
        if key not in fields:
            raise Rejected(f"{where}{key}: unknown field (TGI would ignore it; the double refuses)")


def _grammar(value: Any, where: str) -> tuple[str, Any] | None:
    """`GrammarType`: adjacently tagged by `type`, its content under `value`."""
    if value is None:
        return None
    kinds = {"json": "json", "json_object": "json", "regex": "regex", "json_schema": "json_schema"}
    if not isinstance(value, dict) or value.get("type") not in kinds:
        raise Rejected(f"{where}: unknown variant, expected one of `json`, `regex`, `json_schema`")
    if "value" not in value:
        raise Rejected(f"{where}: missing field `value`")
    kind, content = kinds[value["type"]], value["value"]
    if kind == "json_schema":
        if not isinstance(content, dict) or "schema" not in content:
            raise Rejected(f"{where}.value: missing field `schema`")
        kind, content = "json", content["schema"]
    if kind == "regex" and not isinstance(content, str):
        raise Rejected(f"{where}.value: invalid type, expected a string")
    return kind, content


def _messages(value: Any) -> list[dict[str, Any]]:
    """`Message`: role, then `content` (text or text/image_url parts) or `tool_calls`
    (untagged, content tried first), and an optional name."""
    if not isinstance(value, list) or not value:
        raise Rejected("messages: invalid type, expected a sequence")
    for i, message in enumerate(value):
        _known(message, MESSAGE_FIELDS, f"messages[{i}].")
        content = message.get("content")
        parts_ok = isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") in ("text", "image_url") for p in content
        )
        calls = message.get("tool_calls")
        if not (
            isinstance(content, str) or parts_ok or (content is None and isinstance(calls, list))
        ):
            raise Rejected(f"messages[{i}]: data did not match any variant of enum MessageBody")
        if content is not None and calls is not None:
            raise Rejected(
                f"messages[{i}]: TGI would read `content`, ignoring `tool_calls` (the double "
                "refuses)"
            )
    return value


def _tools(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise Rejected("tools: invalid type, expected a sequence")
    for i, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or "type" not in tool or not isinstance(function, dict):
            raise Rejected(f"tools[{i}]: missing field `function`")
        if "name" not in function:
            raise Rejected(f"tools[{i}].function: missing field `name`")
        if "parameters" not in function and "arguments" not in function:
            raise Rejected(f"tools[{i}].function: missing field `arguments`")
    return value


def _parameters(tool: dict[str, Any]) -> Any:
    """The tool's schema: TGI's field is `arguments`, `parameters` an alias of it."""
    function = tool["function"]
    return function["parameters"] if "parameters" in function else function["arguments"]


def _tool_choice(value: Any) -> str:
    """`ToolChoice`: "auto" (also for null), "none", "required", or a function name
    (given bare or as `{"type": "function", "function": {"name"}}`) as `=name`."""
    if value is None:
        return "auto"
    if isinstance(value, str):
        return value if value in ("auto", "none", "required") else f"={value}"
    if (
        isinstance(value, dict)
        and value.get("type") == "function"
        and isinstance((value.get("function") or {}).get("name"), str)
    ):
        return f"={value['function']['name']}"
    raise Rejected("tool_choice: data did not match any variant of enum ToolTypeDeserializer")


def _pick_tool(
    tools: list[dict[str, Any]], choice: str, messages: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The tool the double "calls" (`ToolGrammar::apply`, then the model's pick)."""
    if choice.startswith("="):
        for tool in tools:
            if tool["function"]["name"] == choice[1:]:
                return tool
        raise Failed("tool_error", f"Tool error: Tool with name {choice[1:]} not found")
    if choice == "none" or not tools:
        return None
    if choice == "required":
        return tools[0]
    user = _last_user_text(messages)
    return next((t for t in tools if t["function"]["name"] in user), None)  # else no_tool


def _validate(params: dict[str, Any]) -> None:
    """router/src/validation.rs, for the parameters the double looks at."""
    if params.get("temperature") is not None and not params["temperature"] > 0:
        raise _invalid("`temperature` must be strictly positive")
    if params.get("repetition_penalty") is not None and not params["repetition_penalty"] > 0:
        raise _invalid("`repetition_penalty` must be strictly positive")
    if params.get("frequency_penalty") is not None and not -2 <= params["frequency_penalty"] <= 2:
        raise _invalid("`frequency_penalty` must be >= -2.0 and <= 2.0")
    if params.get("top_p") is not None and not 0 < params["top_p"] < 1:
        raise _invalid("`top_p` must be > 0.0 and < 1.0")
    if params.get("top_k") is not None and not params["top_k"] > 0:
        raise _invalid("`top_k` must be strictly positive")
    if params.get("max_new_tokens") == 0:
        raise _invalid("`max_new_tokens` must be strictly positive")
    stop = params.get("stop") or []
    if len(stop) > MAX_STOP_SEQUENCES:
        raise _invalid(
            f"`stop` supports up to {MAX_STOP_SEQUENCES} stop sequences. Given: {len(stop)}"
        )
    top_n = params.get("top_n_tokens")
    if top_n is not None and top_n > MAX_TOP_N_TOKENS:
        raise _invalid(f"`top_n_tokens` must be >= 0 and <= {MAX_TOP_N_TOKENS}. Given: {top_n}")


def _invalid(message: str) -> Failed:
    return Failed("validation", f"Input validation error: {message}")


# -- "generation" --------------------------------------------------------------------


def _words(text: str, adapter: str | None) -> list[str]:
    words = [f"[{adapter}]", *text.split()] if adapter else text.split()
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _output(grammar: tuple[str, Any] | None, echo: list[str]) -> list[str]:
    """The pieces (tokens) answered: the echo, or what the grammar allows."""
    if grammar is None:
        return echo
    kind, value = grammar
    if kind == "regex":
        try:
            if re.fullmatch(value, "".join(echo)):
                return echo
        except re.error:
            pass
        raise Failed(
            "generation", f"Request failed during generation: the double cannot fit {value!r}"
        )
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise _invalid(f"grammar is not valid: {exc}") from None
    if not isinstance(value, dict):
        raise _invalid("grammar is not supported")
    if "properties" not in value:
        raise _invalid("grammar is not valid: Grammar must have a 'properties' field")
    return _pieces(json.dumps(_instance(value)))


def _instance(schema: Any) -> Any:
    """A deterministic JSON value of `schema`, with every property filled in."""
    if not isinstance(schema, dict):
        return "text"
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object" or "properties" in schema:
        return {name: _instance(sub) for name, sub in (schema.get("properties") or {}).items()}
    scalars = {"integer": 1, "number": 1.5, "boolean": True, "array": [], "null": None}
    return scalars.get(kind, "text")


def _pieces(text: str) -> list[str]:
    return re.findall(r"\s*\S+", text)


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if p.get("type") == "text")
    return content or ""


def _chat_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(len(_text(m).split()) for m in messages)


def _tokens(text: str) -> list[dict[str, Any]]:
    """TGI's TokenizeResponse: one SimpleToken per word here."""
    return [{"id": i, "text": w, "start": 0, "stop": 0} for i, w in enumerate(text.split())]


def _too_long(prompt: int, budget: int) -> str:
    return (
        f"`inputs` tokens + `max_new_tokens` must be <= {MAX_TOTAL_TOKENS}. "
        f"Given: {prompt} `inputs` tokens and {budget} `max_new_tokens`"
    )


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    return next((_text(m) for m in reversed(messages) if m["role"] == "user"), "")


def _next_tool_call_id(messages: list[dict[str, Any]]) -> str:
    """`ChatRequest::next_tool_call_id`: one past the largest numeric id in the
    conversation's tool calls, or a UUID when one is not a number."""
    next_id = 0
    for message in messages:
        calls = message.get("tool_calls") if message.get("content") is None else None
        for call in calls or ():
            try:
                next_id = max(next_id, int(call["id"]) + 1)
            except (KeyError, ValueError):
                return str(uuid.uuid4())
    return str(next_id)


# -- answers -------------------------------------------------------------------------


def _chat_head(kind: str) -> dict[str, Any]:
    return {
        "object": kind,
        "id": "",
        "created": int(time.time()),
        "model": "tgi-double",
        "system_fingerprint": "3.3.0-double-native",
    }


def _error(exc: Failed) -> JSONResponse:
    return JSONResponse({"error": exc.message, "error_type": exc.kind}, STATUS[exc.kind])


def _native_error(exc: Failed) -> str:
    return _sse({"error": exc.message, "error_type": exc.kind})


def _chat_error(exc: Failed) -> str:
    return _sse({"error": {"message": exc.message, "http_status_code": 422}})


def _events(events: list[str]) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        for event in events:
            yield event

    return StreamingResponse(body(), media_type="text/event-stream")


def _sse(payload: dict[str, Any]) -> str:
    return f"data:{json.dumps(payload)}\n\n"
