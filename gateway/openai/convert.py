"""OpenAI bodies → engine requests: every field checked, mapped or refused by name.

The renderers (gateway/openai/render.py) take it from there: engine chunks → OpenAI
responses and stream chunks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from engines import options as engine_options
from engines.types import GenerationRequest, Message
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
    sent = body.model_fields_set  # what the client did not send asks for nothing
    for name, why in GATEWAY_REFUSED.items():
        value = getattr(body, name, None) if name in sent else None
        if value not in (False, []) and engine_options.is_set(name, value):
            raise InvalidRequest(
                f"'{name}' is not supported: {why}; remove it from the request.",
                param=name,
                code="unsupported_parameter",
            )


def _options(body: _Sampling, bounds: Bounds) -> dict[str, Any]:
    options = body.options()
    if body.stream and body.prompt_logprobs:
        raise InvalidRequest(
            "'prompt_logprobs' come with the whole answer only: send stream: false.",
            param="prompt_logprobs",
        )
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
        raise InvalidRequest(
            "best_of other than n is not supported: no engine here ranks candidates (vLLM "
            "removed best_of); ask for n choices with logprobs and pick among them.",
            param="best_of",
        )
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
