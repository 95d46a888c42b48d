"""OpenAI bodies → engine requests, engine chunks → OpenAI responses and stream chunks."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from engines.types import (
    Chunk,
    FinishReason,
    GenerationRequest,
    Message,
    TokenLogprob,
    ToolCallDelta,
)
from gateway.errors import InvalidRequest
from gateway.openai.schemas import (
    GATEWAY_REFUSED,
    ChatCompletionRequest,
    CompletionRequest,
    _Sampling,
)

# vLLM's older spellings → the `structured_outputs` key they became.
_GUIDED = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
}


@dataclass(frozen=True, slots=True)
class Bounds:
    """What one request may ask for (settings: max_n, max_tools, max_schema_bytes)."""

    max_n: int = 16
    max_tools: int = 128
    max_schema_bytes: int = 64 * 1024


def _refuse_gateway_fields(body: _Sampling) -> None:
    for name, why in GATEWAY_REFUSED.items():
        value = getattr(body, name, None)
        if value not in (None, False, []):
            raise InvalidRequest(
                f"'{name}' is not supported: {why}; remove it from the request.",
                param=name,
                code="unsupported_parameter",
            )


def _options(body: _Sampling, bounds: Bounds) -> dict[str, Any]:
    options = body.options()
    guided = {key: getattr(body, old) for old, key in _GUIDED.items() if getattr(body, old)}
    if guided:
        if "structured_outputs" in options or len(guided) > 1:
            raise InvalidRequest(
                "Send one constraint: structured_outputs, or one guided_* field.",
                param=next(iter(o for o in _GUIDED if getattr(body, o))),
            )
        options["structured_outputs"] = guided
    for name in ("response_format", "structured_outputs"):
        _bounded_size(options.get(name), name, bounds)
    response_format = options.get("response_format") or {}
    schema = (response_format.get("json_schema") or {}).get("schema")
    if schema is not None:
        _check_schema(schema, "response_format.json_schema.schema")
    structured = options.get("structured_outputs") or {}
    if isinstance(structured.get("json"), dict):
        _check_schema(structured["json"], "structured_outputs.json")
    if isinstance(structured.get("regex"), str):
        _check_regex(structured["regex"], "structured_outputs.regex")
    return options


def _tools(body: ChatCompletionRequest, options: dict[str, Any], bounds: Bounds) -> None:
    """Legacy `functions` as `tools`; checks the tools against `tool_choice`; forced
    tool calls pinned to their tools' schemas (as with `strict: true`)."""
    if body.functions is not None:
        if body.tools is not None:
            raise InvalidRequest("Send tools or functions, not both.", param="functions")
        options["tools"] = [{"type": "function", "function": f} for f in _functions(body)]
        if body.function_call is not None:
            call = body.function_call
            options["tool_choice"] = (
                call
                if isinstance(call, str)
                else {"type": "function", "function": {"name": call.name}}
            )
    elif body.function_call is not None:
        raise InvalidRequest("function_call needs functions.", param="function_call")
    tools = options.get("tools") or []
    if len(tools) > bounds.max_tools:
        raise InvalidRequest(
            f"{len(tools)} tools is more than this gateway takes ({bounds.max_tools}).",
            param="tools",
        )
    for i, tool in enumerate(tools):
        parameters = tool["function"].get("parameters")
        where = f"tools[{i}].function.parameters"
        _bounded_size(parameters, where, bounds)
        if parameters is not None:
            _check_schema(parameters, where)
    choice = options.get("tool_choice")
    if choice not in (None, "none") and not tools:
        raise InvalidRequest(
            "tool_choice needs tools; send the tools it may call.", param="tool_choice"
        )
    names = [t["function"]["name"] for t in tools]
    if isinstance(choice, dict) and choice["function"]["name"] not in names:
        raise InvalidRequest(
            f"tool_choice names the function '{choice['function']['name']}', which is not "
            f"among the tools ({', '.join(names)}).",
            param="tool_choice",
        )
    if choice == "required" or isinstance(choice, dict):
        options["tools"] = [_strict(t) for t in tools]


def _functions(body: ChatCompletionRequest) -> list[dict[str, Any]]:
    return [f.model_dump(exclude_none=True) for f in body.functions or ()]


def _strict(tool: dict[str, Any]) -> dict[str, Any]:
    """A tool whose arguments are generated against its parameters' schema. vLLM's
    server leaves a forced call's arguments free unless the tool says `strict`: the
    demo model then answers a JSON string where an object was asked for."""
    function = tool["function"]
    if function.get("strict") is not None or function.get("parameters") is None:
        return tool
    return {**tool, "function": {**function, "strict": True}}


def _bounded_size(value: Any, where: str, bounds: Bounds) -> None:
    if value is not None and len(orjson.dumps(value)) > bounds.max_schema_bytes:
        raise InvalidRequest(
            f"{where} is larger than this gateway takes ({bounds.max_schema_bytes} bytes).",
            param=where,
        )


def _check_schema(schema: Any, where: str) -> None:
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidRequest(
            f"{where} is not a valid JSON Schema: {exc.message}", param=where
        ) from None


def _check_regex(pattern: str, where: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise InvalidRequest(
            f"{where} is not a valid regular expression: {exc}", param=where
        ) from None


def _prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | tuple[int, ...]]:
    if isinstance(prompt, str):
        return [prompt]
    if all(isinstance(p, int) for p in prompt):
        return [tuple(p for p in prompt if isinstance(p, int))]
    return [p if isinstance(p, str) else tuple(p) for p in prompt if not isinstance(p, int)]


def _common(body: _Sampling, bounds: Bounds) -> dict[str, Any]:
    _refuse_gateway_fields(body)
    n = body.n or 1
    if n > bounds.max_n:
        raise InvalidRequest(f"n must be at most {bounds.max_n}; got {n}.", param="n")
    return {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "n": n,
        "stop": body.stops(),
        "seed": body.seed,
        "presence_penalty": body.presence_penalty or 0.0,
        "frequency_penalty": body.frequency_penalty or 0.0,
        "incremental": bool(body.stream),
    }


def chat_request(body: ChatCompletionRequest, request_id: str, bounds: Bounds) -> GenerationRequest:
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequest("top_logprobs requires logprobs to be true.", param="top_logprobs")
    if (
        body.max_tokens is not None
        and body.max_completion_tokens is not None
        and body.max_tokens != body.max_completion_tokens
    ):
        raise InvalidRequest(
            "max_tokens and max_completion_tokens disagree; send only max_completion_tokens.",
            param="max_tokens",
        )
    common = _common(body, bounds)
    options = _options(body, bounds)
    _tools(body, options, bounds)
    messages = tuple(
        Message(
            m.role,
            m.content if not isinstance(m.content, list) else tuple(m.content),
            m.name,
            tuple(m.wire_tool_calls()),
            m.tool_call_id,
        )
        for m in body.messages
    )
    return GenerationRequest(
        request_id=request_id,
        prompt=messages,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        options=options,
        **common,
    )


def completion_requests(
    body: CompletionRequest, request_id: str, bounds: Bounds
) -> list[GenerationRequest]:
    """One engine request per prompt; a list of prompts (text or token ids) is a batch."""
    prompts = _prompts(body.prompt)
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise InvalidRequest("best_of other than n is not supported.", param="best_of")
    common = _common(body, bounds)
    options = _options(body, bounds)
    return [
        GenerationRequest(
            request_id=f"{request_id}-{i}" if len(prompts) > 1 else request_id,
            prompt=one,
            max_tokens=body.max_tokens,
            logprobs=body.logprobs,
            options=options,
            **common,
        )
        for i, one in enumerate(prompts)
    ]


# -- responses -----------------------------------------------------------------------


@dataclass(slots=True)
class _ToolCall:
    id: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    offset: int = 0  # characters emitted so far (completions' text_offset)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, _ToolCall] = field(default_factory=dict)

    def add_tool_calls(self, deltas: tuple[ToolCallDelta, ...]) -> None:
        for delta in deltas:
            call = self.tool_calls.setdefault(delta.index, _ToolCall())
            call.id = call.id or delta.id
            call.name = call.name or delta.name
            call.arguments.append(delta.arguments)


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def body(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


class Renderer:
    """Turns the chunks of one request into an OpenAI response or stream chunks.

    `index` on incoming chunks is already the response-wide choice index. Chunks with
    no text and no finish (the end-of-sequence token) are not shown to clients.
    """

    object_name: str
    chunk_object_name: str
    id_prefix: str

    def __init__(self, request_id: str, model: str, n: int, logprobs: bool) -> None:
        self.id = f"{self.id_prefix}{request_id}"
        self.model = model
        self.created = int(time.time())
        self.n = n
        self.with_logprobs = logprobs
        self.choices = [_Choice() for _ in range(n)]
        self.usage = Usage()
        self._prompt_seen: set[int] = set()

    def count(self, chunk: Chunk, prompt_slot: int) -> None:
        """Usage: completion tokens summed; each prompt counted once, from the first
        chunk that knows its length (remote engines say it only at the end)."""
        self.usage.completion_tokens += chunk.token_count
        if chunk.prompt_tokens and prompt_slot not in self._prompt_seen:
            self._prompt_seen.add(prompt_slot)
            self.usage.prompt_tokens += chunk.prompt_tokens

    def add(self, chunk: Chunk) -> None:
        choice = self.choices[chunk.index]
        if chunk.text:  # a chunk of no text reports the end-of-sequence token's logprob
            choice.text.append(chunk.text)
            choice.logprobs.extend(chunk.logprobs)
        if chunk.reasoning:
            choice.reasoning.append(chunk.reasoning)
        if chunk.tool_calls:
            choice.add_tool_calls(chunk.tool_calls)
        if chunk.finish_reason:
            choice.finish_reason = chunk.finish_reason

    def _envelope(self, choices: list[dict[str, Any]], *, final: bool) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.object_name if final else self.chunk_object_name,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }

    def response(self) -> dict[str, Any]:
        body = self._envelope(
            [self._final_choice(i, c) for i, c in enumerate(self.choices)], final=True
        )
        body["usage"] = self.usage.body()
        return body

    def usage_chunk(self) -> dict[str, Any]:
        body = self._envelope([], final=False)
        body["usage"] = self.usage.body()
        return body

    def chunk(self, choices: list[dict[str, Any]], include_usage: bool) -> dict[str, Any]:
        body = self._envelope(choices, final=False)
        if include_usage:
            body["usage"] = None
        return body

    # Per endpoint:
    def _final_choice(self, index: int, choice: _Choice) -> dict[str, Any]:
        raise NotImplementedError

    def opening(self) -> list[dict[str, Any]]:
        """Choice deltas sent before any text."""
        return []

    def deltas(self, chunk: Chunk) -> list[dict[str, Any]]:
        raise NotImplementedError


class ChatRenderer(Renderer):
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    def _final_choice(self, index: int, choice: _Choice) -> dict[str, Any]:
        text = "".join(choice.text)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text if text or not choice.tool_calls else None,
            "refusal": None,
        }
        if choice.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": "".join(call.arguments)},
                }
                for _, call in sorted(choice.tool_calls.items())
            ]
        if choice.reasoning:
            message.update(_reasoning("".join(choice.reasoning)))
        return {
            "index": index,
            "message": message,
            "logprobs": _chat_logprobs(choice.logprobs) if self.with_logprobs else None,
            "finish_reason": choice.finish_reason,
        }

    def opening(self) -> list[dict[str, Any]]:
        return [
            {
                "index": i,
                "delta": {"role": "assistant", "content": "", "refusal": None},
                "logprobs": None,
                "finish_reason": None,
            }
            for i in range(self.n)
        ]

    def deltas(self, chunk: Chunk) -> list[dict[str, Any]]:
        out = []
        delta: dict[str, Any] = {}
        if chunk.reasoning:
            delta.update(_reasoning(chunk.reasoning))
        if chunk.text:
            delta["content"] = chunk.text
        if chunk.tool_calls:
            delta["tool_calls"] = [_tool_call_delta(t) for t in chunk.tool_calls]
        if delta:
            logprobs = None
            if self.with_logprobs and chunk.text:
                logprobs = _chat_logprobs(chunk.logprobs)
            out.append(
                {"index": chunk.index, "delta": delta, "logprobs": logprobs, "finish_reason": None}
            )
        if chunk.finish_reason:
            out.append(
                {
                    "index": chunk.index,
                    "delta": {},
                    "logprobs": None,
                    "finish_reason": chunk.finish_reason,
                }
            )
        return out


class CompletionRenderer(Renderer):
    object_name = "text_completion"
    chunk_object_name = "text_completion"
    id_prefix = "cmpl-"

    def _final_choice(self, index: int, choice: _Choice) -> dict[str, Any]:
        logprobs = _completion_logprobs(choice.logprobs, 0) if self.with_logprobs else None
        return {
            "index": index,
            "text": "".join(choice.text),
            "logprobs": logprobs,
            "finish_reason": choice.finish_reason,
        }

    def deltas(self, chunk: Chunk) -> list[dict[str, Any]]:
        if not chunk.text and not chunk.finish_reason:
            return []
        choice = self.choices[chunk.index]
        logprobs = None
        if self.with_logprobs:
            logprobs = _completion_logprobs(chunk.logprobs if chunk.text else (), choice.offset)
        choice.offset += len(chunk.text)
        return [
            {
                "index": chunk.index,
                "text": chunk.text,
                "logprobs": logprobs,
                "finish_reason": chunk.finish_reason,
            }
        ]


def _tool_call_delta(delta: ToolCallDelta) -> dict[str, Any]:
    """OpenAI's shape: the first piece of a call names it, later ones add arguments."""
    function: dict[str, Any] = {"arguments": delta.arguments}
    body: dict[str, Any] = {"index": delta.index}
    if delta.id is not None or delta.name is not None:
        body["id"] = delta.id
        body["type"] = "function"
        function["name"] = delta.name
    body["function"] = function
    return body


def _reasoning(text: str) -> dict[str, str]:
    """Reasoning under vLLM's current name and the one most clients read."""
    return {"reasoning": text, "reasoning_content": text}


def _token(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def _chat_logprobs(tokens: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> dict[str, Any]:
    return {
        "content": [
            {**_token(t.token, t.logprob), "top_logprobs": [_token(a, lp) for a, lp in t.top]}
            for t in tokens
        ],
        "refusal": None,
    }


def _completion_logprobs(
    tokens: list[TokenLogprob] | tuple[TokenLogprob, ...], offset: int
) -> dict[str, Any]:
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [dict(t.top) for t in tokens],
        "text_offset": offsets,
    }
