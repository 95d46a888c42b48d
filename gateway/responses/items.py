"""Responses items ↔ the chat request the pipeline runs.

A Responses request becomes one chat completion request: `instructions` a system
message first, then the stored conversation of `previous_response_id` (items), then
this request's input items; function tools, `tool_choice` and `text.format` map onto
their chat spellings. Input items are stored as OpenAI lists them (with ids and
`status`), so a later turn rebuilds the same conversation on any gateway replica.

Item → chat message, as vLLM's server maps them: a `function_call` joins the
assistant message before it (or starts one) as a tool call; a `function_call_output`
is a `tool` message; an assistant `message` fills the content of an assistant turn
made only of tool calls; `reasoning` items are kept in the history but not sent.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from gateway.errors import InvalidRequest
from gateway.responses.schemas import PASSED_ON, REFUSED, ResponsesRequest

Item = dict[str, Any]

_ROLES = ("user", "system", "developer", "assistant")
_TEXT_PARTS = ("input_text", "output_text", "text")
_BUILT_IN = {
    "web_search",
    "web_search_preview",
    "web_search_preview_2025_03_11",
    "web_search_2025_08_26",
    "file_search",
    "code_interpreter",
    "computer_use_preview",
    "computer_use",
    "image_generation",
    "mcp",
    "local_shell",
    "shell",
    "apply_patch",
    "custom",
    "tool_search",
}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def input_items(body: ResponsesRequest) -> list[Item]:
    """This request's input as stored items, each checked and given an id."""
    if isinstance(body.input, str):
        return [_message("user", [{"type": "input_text", "text": body.input}])]
    return [_item(item, f"input[{i}]") for i, item in enumerate(body.input)]


def _message(role: str, content: list[dict[str, Any]], status: str = "completed") -> Item:
    return {
        "id": new_id("msg"),
        "type": "message",
        "role": role,
        "content": content,
        "status": status,
    }


def _item(item: dict[str, Any], where: str) -> Item:
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        return _input_message(item, where)
    if kind == "function_call":
        call = {k: _text(item, k, where) for k in ("call_id", "name", "arguments")}
        return {"id": item.get("id") or new_id("fc"), "type": kind, **call, "status": "completed"}
    if kind == "function_call_output":
        output = item.get("output")
        if isinstance(output, list):
            output = "".join(_part_text(p, f"{where}.output[{i}]") for i, p in enumerate(output))
        if not isinstance(output, str):
            raise InvalidRequest(f"{where}.output must be a string.", param=f"{where}.output")
        call_id = _text(item, "call_id", where)
        return {
            "id": item.get("id") or new_id("fco"),
            "type": kind,
            "call_id": call_id,
            "output": output,
            "status": "completed",
        }
    if kind == "reasoning":
        if item.get("encrypted_content"):
            raise InvalidRequest(
                "Encrypted reasoning content is not supported; send the reasoning as "
                "content, or leave the item out.",
                param=f"{where}.encrypted_content",
            )
        return {
            "id": item.get("id") or new_id("rs"),
            "type": kind,
            "summary": list(item.get("summary") or []),
            "content": list(item.get("content") or []),
        }
    if kind == "item_reference":
        raise InvalidRequest(
            "Item references are not supported; send the item itself, or chain the "
            "conversation with previous_response_id.",
            param=f"{where}.type",
        )
    raise InvalidRequest(
        f"Input items of type {kind!r} are not supported; this gateway takes messages, "
        "function_call, function_call_output and reasoning items.",
        param=f"{where}.type",
    )


def _input_message(item: dict[str, Any], where: str) -> Item:
    role = item.get("role")
    if role not in _ROLES:
        raise InvalidRequest(
            f"{where}.role must be one of {', '.join(_ROLES)}; got {role!r}.", param=f"{where}.role"
        )
    content = item.get("content")
    part_type = "output_text" if role == "assistant" else "input_text"
    if isinstance(content, str):
        parts = [{"type": part_type, "text": content}]
    elif isinstance(content, list):
        parts = [_part(p, f"{where}.content[{i}]") for i, p in enumerate(content)]
    else:
        raise InvalidRequest(
            f"{where}.content must be a string or a list of content parts.",
            param=f"{where}.content",
        )
    return _message(role, parts, item.get("status") or "completed")


def _part(part: Any, where: str) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise InvalidRequest(f"{where} must be an object.", param=where)
    kind = part.get("type")
    if kind in _TEXT_PARTS:
        text = _text(part, "text", where)
        out: dict[str, Any] = {"type": kind, "text": text}
        if kind == "output_text":
            out["annotations"] = list(part.get("annotations") or [])
        return out
    if kind == "refusal":
        return {"type": "refusal", "refusal": _text(part, "refusal", where)}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise InvalidRequest(
                f"{where}.image_url must be a URL or a data URL; uploaded file ids are "
                "not served here.",
                param=f"{where}.image_url",
            )
        return {"type": kind, "image_url": url, "detail": part.get("detail") or "auto"}
    raise InvalidRequest(
        f"Content parts of type {kind!r} are not supported here; send input_text or input_image.",
        param=f"{where}.type",
    )


def _part_text(part: Any, where: str) -> str:
    if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS:
        raise InvalidRequest(f"{where} must be a text part.", param=where)
    return _text(part, "text", where)


def _text(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise InvalidRequest(f"{where}.{key} must be a string.", param=f"{where}.{key}")
    return value


def messages(items: Sequence[Item]) -> list[dict[str, Any]]:
    """The chat messages of a conversation of items (see the module docstring)."""
    out: list[dict[str, Any]] = []
    for item in items:
        last = out[-1] if out and out[-1]["role"] == "assistant" else None
        kind = item["type"]
        if kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            if last is not None:
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            out.append({"role": "tool", "content": item["output"], "tool_call_id": item["call_id"]})
        elif kind == "message":
            content = _chat_content(item["content"])
            if item["role"] == "assistant" and last is not None and last["content"] is None:
                last["content"] = content
            else:
                out.append({"role": item["role"], "content": content})
    return out


def _chat_content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """One text part as a string (as vLLM's server sends it); more as chat parts."""
    chat: list[dict[str, Any]] = []
    for part in parts:
        if part["type"] in _TEXT_PARTS:
            chat.append({"type": "text", "text": part["text"]})
        elif part["type"] == "refusal":
            chat.append({"type": "text", "text": part["refusal"]})
        else:
            chat.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
    if len(chat) == 1 and chat[0]["type"] == "text":
        return str(chat[0]["text"])
    return chat


def chat_body(body: ResponsesRequest, history: Sequence[Item], items: Sequence[Item]) -> Item:
    """The chat completion body that answers `body` after the stored `history`."""
    _refuse(body)
    chat: Item = {"model": body.model, "stream": bool(body.stream)}
    conversation = messages([*history, *items])
    if body.instructions:
        conversation.insert(0, {"role": "system", "content": body.instructions})
    chat["messages"] = conversation
    for name in PASSED_ON:
        if name in body.model_fields_set and getattr(body, name) is not None:
            chat[name] = body.model_dump(include={name}, by_alias=True)[name]
    if body.max_output_tokens is not None:
        chat["max_completion_tokens"] = body.max_output_tokens
    if body.tools:
        chat["tools"] = [_tool(tool, f"tools[{i}]") for i, tool in enumerate(body.tools)]
    if body.tool_choice is not None:
        chat["tool_choice"] = _tool_choice(body.tool_choice)
    fmt = body.text.format if body.text is not None else None
    if fmt is not None and fmt.type == "json_schema":
        if fmt.name is None or fmt.schema_ is None:
            raise InvalidRequest(
                "text.format of type 'json_schema' needs 'name' and 'schema'.",
                param="text.format",
            )
        schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
        if fmt.description is not None:
            schema["description"] = fmt.description
        if fmt.strict is not None:
            schema["strict"] = fmt.strict
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif fmt is not None and fmt.type == "json_object":
        chat["response_format"] = {"type": "json_object"}
    if body.reasoning is not None and body.reasoning.effort is not None:
        chat["reasoning_effort"] = body.reasoning.effort
        kwargs = dict(body.chat_template_kwargs or {})  # vLLM's server does the same
        kwargs.setdefault("enable_thinking", body.reasoning.effort != "none")
        chat["chat_template_kwargs"] = kwargs
    if wants_logprobs(body):
        chat["logprobs"] = True
        chat["top_logprobs"] = body.top_logprobs or 0
    if body.truncation == "auto":
        chat["truncate_prompt_tokens"] = -1  # keep the prompt's end, as vLLM's server does
    return chat


def wants_logprobs(body: ResponsesRequest) -> bool:
    return "message.output_text.logprobs" in (body.include or ())


def _refuse(body: ResponsesRequest) -> None:
    for name, why in REFUSED.items():
        if getattr(body, name) not in (None, False, []):
            raise InvalidRequest(
                f"'{name}' is not supported: {why}.", param=name, code="unsupported_parameter"
            )


def _tool(tool: dict[str, Any], where: str) -> dict[str, Any]:
    kind = tool.get("type")
    if kind in _BUILT_IN or (isinstance(kind, str) and kind != "function"):
        raise InvalidRequest(
            f"The built-in tool {kind!r} is not served by this gateway: only function "
            "tools are. Remove it, or describe it as a function tool your code runs.",
            param=f"{where}.type",
            code="unsupported_tool",
        )
    if kind != "function":
        raise InvalidRequest(f"{where}.type must be 'function'.", param=f"{where}.type")
    function = {"name": _text(tool, "name", where)}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        return choice
    kind = choice.get("type")
    if kind == "function":
        return {"type": "function", "function": {"name": _text(choice, "name", "tool_choice")}}
    raise InvalidRequest(
        f"tool_choice of type {kind!r} is not supported here: choose 'auto', 'none', "
        "'required' or a function tool by name.",
        param="tool_choice",
    )
