"""Engine chunks → a Responses API object, or its stream of typed events.

Whole and streamed answers are built by the same steps, so both have the same items
in the same order: reasoning text opens a `reasoning` item, answer text a `message`
item (one `output_text` part), and each tool call a `function_call` item, in the
order the engine produced them. A stream is the event sequence OpenAI sends and its
SDK's `responses.stream` accumulates:

    response.created, response.in_progress
    per item: response.output_item.added
        message:  response.content_part.added, response.output_text.delta …,
                  response.output_text.done, response.content_part.done
        function: response.function_call_arguments.delta …, …arguments.done
        reasoning: response.reasoning_text.delta …, response.reasoning_text.done
    response.output_item.done (each item)
    response.completed, or response.incomplete (stopped by max_output_tokens),
    or response.failed (the engine failed after the stream began)

Each event carries its `sequence_number`; no `[DONE]` follows (OpenAI sends none).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from engines.types import Chunk, TokenLogprob
from gateway.errors import GatewayError
from gateway.openai.render import Renderer
from gateway.openai.sse import typed_event
from gateway.responses.items import new_id, wants_logprobs
from gateway.responses.schemas import ResponsesRequest

Event = dict[str, Any]
Kind = Literal["message", "function_call", "reasoning"]
# Stores the answer once it is whole; says whether it was stored.
Keep = Callable[["ResponsesRenderer"], Awaitable[bool]]


@dataclass(slots=True)
class _Item:
    kind: Kind
    id: str
    index: int  # output_index
    text: list[str] = field(default_factory=list)  # message, reasoning; arguments of a call
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    done: bool = False

    def body(self, status: str) -> dict[str, Any]:
        text = "".join(self.text)
        if self.kind == "message":
            part = {
                "type": "output_text",
                "text": text,
                "annotations": [],
                "logprobs": self.logprobs,
            }
            content = [part] if status != "in_progress" else []
            return {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "status": status,
                "content": content,
            }
        if self.kind == "function_call":
            return {
                "id": self.id,
                "type": "function_call",
                "call_id": self.call_id,
                "name": self.name,
                "arguments": text,
                "status": status,
            }
        content = [{"type": "reasoning_text", "text": text}] if status != "in_progress" else []
        return {"id": self.id, "type": "reasoning", "summary": [], "content": content}


class ResponsesRenderer(Renderer):
    object_name = "response"
    chunk_object_name = "response"
    id_prefix = "resp_"

    def __init__(self, request_id: str, body: ResponsesRequest, keep: Keep | None) -> None:
        super().__init__(request_id, body.model, 1, wants_logprobs(body))
        self.id = new_id("resp")  # never the request id: clients may choose that one
        self.body = body
        self.keep = keep
        self.stored = keep is not None  # until storing it fails
        self.items: list[_Item] = []
        self._open: _Item | None = None  # the message or reasoning item text goes to
        self._calls: dict[int, _Item] = {}  # by the engine's tool-call index
        self._sequence = 0
        self._closing: list[Event] = []
        self._status = "in_progress"
        self._completed_at: int | None = None

    # -- whole answers ---------------------------------------------------------------

    def add(self, chunk: Chunk) -> None:
        super().add(chunk)  # keeps finish_reason
        self._step(chunk)

    async def seal(self) -> None:
        if not self.items:
            self._opened("message", self._closing)
        for item in self.items:
            self._close(item, self._closing)
        self._status = "incomplete" if self.choices[0].finish_reason == "length" else "completed"
        self._completed_at = int(time.time())
        if self.keep is not None:
            self.stored = await self.keep(self)

    def response(self) -> dict[str, Any]:
        return self._snapshot(self._status)

    def output(self) -> list[dict[str, Any]]:
        status = "incomplete" if self._status == "incomplete" else "completed"
        return [item.body(status if item.kind == "message" else "completed") for item in self.items]

    # -- streams ---------------------------------------------------------------------

    def head(self, include_usage: bool) -> list[bytes]:
        snapshot = self._snapshot("in_progress")
        return [
            self._emit({"type": "response.created", "response": snapshot}),
            self._emit({"type": "response.in_progress", "response": snapshot}),
        ]

    def events(self, chunk: Chunk, include_usage: bool) -> list[bytes]:
        super().add(chunk)
        return [self._emit(e) for e in self._step(chunk)]

    def tail(self, include_usage: bool) -> list[bytes]:
        done = "response.incomplete" if self._status == "incomplete" else "response.completed"
        closing = [self._emit(e) for e in self._closing]
        return [*closing, self._emit({"type": done, "response": self.response()})]

    def failure(self, error: GatewayError) -> list[bytes]:
        snapshot = self._snapshot("failed")
        snapshot["error"] = {"code": error.code or error.type, "message": error.message}
        return [self._emit({"type": "response.failed", "response": snapshot})]

    # -- the steps both share --------------------------------------------------------

    def _step(self, chunk: Chunk) -> list[Event]:
        events: list[Event] = []
        if chunk.reasoning:
            item = self._current("reasoning", events)
            item.text.append(chunk.reasoning)
            events.append(self._delta("response.reasoning_text.delta", item, chunk.reasoning))
        if chunk.text:
            item = self._current("message", events)
            item.text.append(chunk.text)
            logprobs = _logprobs(chunk.logprobs) if self.with_logprobs else []
            item.logprobs.extend(logprobs)
            delta = self._delta("response.output_text.delta", item, chunk.text)
            events.append({**delta, "logprobs": logprobs})
        for call in chunk.tool_calls:
            function = self._calls.get(call.index)
            if function is None:
                self._close_open(events)
                function = self._opened("function_call", events, call.id, call.name)
                self._calls[call.index] = function
            if call.arguments:
                function.text.append(call.arguments)
                events.append(
                    {
                        "type": "response.function_call_arguments.delta",
                        "item_id": function.id,
                        "output_index": function.index,
                        "delta": call.arguments,
                    }
                )
        return events

    def _current(self, kind: Kind, events: list[Event]) -> _Item:
        if self._open is not None and self._open.kind == kind:
            return self._open
        self._close_open(events)
        self._open = self._opened(kind, events)
        return self._open

    def _opened(
        self, kind: Kind, events: list[Event], call_id: str | None = None, name: str | None = None
    ) -> _Item:
        prefix = {"message": "msg", "function_call": "fc", "reasoning": "rs"}[kind]
        item = _Item(kind, new_id(prefix), len(self.items))
        item.call_id, item.name = call_id or new_id("call"), name or ""
        self.items.append(item)
        added = {"type": "response.output_item.added", "output_index": item.index}
        events.append({**added, "item": item.body("in_progress")})
        if kind == "message":
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events.append({**self._part("response.content_part.added", item), "part": part})
        return item

    def _close_open(self, events: list[Event]) -> None:
        if self._open is not None:
            self._close(self._open, events)
            self._open = None

    def _close(self, item: _Item, events: list[Event]) -> None:
        if item.done:
            return
        item.done = True
        text = "".join(item.text)
        if item.kind == "message":
            events.append(
                {
                    **self._part("response.output_text.done", item),
                    "text": text,
                    "logprobs": item.logprobs,
                }
            )
            part = item.body("completed")["content"][0]
            events.append({**self._part("response.content_part.done", item), "part": part})
        elif item.kind == "function_call":
            events.append(
                {
                    "type": "response.function_call_arguments.done",
                    "item_id": item.id,
                    "output_index": item.index,
                    "name": item.name,
                    "arguments": text,
                }
            )
        else:
            events.append({**self._part("response.reasoning_text.done", item), "text": text})
        done = {"type": "response.output_item.done", "output_index": item.index}
        events.append({**done, "item": item.body("completed")})

    def _part(self, kind: str, item: _Item) -> Event:
        return {"type": kind, "item_id": item.id, "output_index": item.index, "content_index": 0}

    def _delta(self, kind: str, item: _Item, text: str) -> Event:
        return {**self._part(kind, item), "delta": text}

    def _emit(self, payload: Event) -> bytes:
        payload["sequence_number"] = self._sequence
        self._sequence += 1
        return typed_event(payload)

    def _snapshot(self, status: str) -> dict[str, Any]:
        body = self.body
        whole = status in ("completed", "incomplete")
        text = body.text.model_dump(by_alias=True, exclude_none=True) if body.text else {}
        text.setdefault("format", {"type": "text"})
        usage = self.usage
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "completed_at": self._completed_at if whole else None,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"}
            if status == "incomplete"
            else None,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "max_tool_calls": body.max_tool_calls,
            "model": body.model,
            "output": self.output() if whole else [],
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "previous_response_id": body.previous_response_id,
            "reasoning": body.reasoning.model_dump() if body.reasoning else None,
            "store": self.stored,
            "temperature": body.temperature,
            "text": text,
            "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
            "tools": body.tools or [],
            "top_logprobs": body.top_logprobs,
            "top_p": body.top_p,
            "truncation": body.truncation or "disabled",
            "usage": {
                "input_tokens": usage.prompt_tokens,
                "input_tokens_details": {"cached_tokens": usage.cached_tokens or 0},
                "output_tokens": usage.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            }
            if whole
            else None,
            "user": body.user,
            "metadata": body.metadata or {},
            "background": False,
        }


def _logprobs(tokens: tuple[TokenLogprob, ...]) -> list[dict[str, Any]]:
    return [
        {
            **_token(t.token, t.logprob),
            "top_logprobs": [_token(alt, lp) for alt, lp in t.top],
        }
        for t in tokens
    ]


def _token(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}
