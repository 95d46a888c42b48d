"""The request fields beyond the sampling core, and which of them an engine honours.

`GenerationRequest.options` carries them under their wire names, as the client sent
them (after validation at the gateway's edge). Engines never drop one silently: an
engine honours a field or raises UnsupportedParameter naming it (`refuse_unhonoured`).
A field set to its neutral value (the value that changes nothing, e.g. `echo: false`,
`tool_choice: "none"` with no tools) is not "set" for this purpose.

    CHAT        OpenAI's chat-only fields, and vLLM's chat extras
    COMPLETION  OpenAI's completion-only fields
    SHARED      OpenAI fields of both endpoints, and vLLM's sampling extras
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

from engines.errors import InvalidGenerationRequest, UnsupportedParameter
from engines.types import GenerationRequest

SHARED = frozenset(
    {
        # OpenAI
        "logit_bias",
        "response_format",
        "user",
        # vLLM's sampling and structured-output extras
        "top_k",
        "min_p",
        "repetition_penalty",
        "length_penalty",
        "min_tokens",
        "ignore_eos",
        "stop_token_ids",
        "include_stop_str_in_output",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "truncate_prompt_tokens",
        "prompt_logprobs",
        "bad_words",
        "allowed_token_ids",
        "structured_outputs",
        "priority",
        "add_special_tokens",
        "return_token_ids",
        "use_beam_search",
        "cache_salt",
        "vllm_xargs",
        "thinking_token_budget",
        "repetition_detection",
        "truncation_side",
        "stream_interval",
        "watermarking",
        "session_id",
    }
)
CHAT = frozenset(
    {
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "reasoning_effort",
        "chat_template_kwargs",
        "add_generation_prompt",
        "continue_final_message",
        "include_reasoning",
        "documents",
        "chat_template",
        "echo",
        "mm_processor_kwargs",
        "media_io_kwargs",
    }
)
COMPLETION = frozenset({"echo", "suffix"})
ALL = SHARED | CHAT | COMPLETION

# Values that change nothing: sending them is the same as not sending the field.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "logit_bias": ({},),
    "response_format": ({"type": "text"},),
    "tools": ([],),
    "tool_choice": ("none",),
    "parallel_tool_calls": (True,),
    "echo": (False,),
    "suffix": ("",),
    "min_tokens": (0,),
    "ignore_eos": (False,),
    "stop_token_ids": ([],),
    "include_stop_str_in_output": (False,),
    "skip_special_tokens": (True,),
    "spaces_between_special_tokens": (True,),
    "bad_words": ([],),
    "priority": (0,),
    "add_generation_prompt": (True,),
    "continue_final_message": (False,),
    "top_k": (-1, 0),
    "min_p": (0.0, 0),
    "repetition_penalty": (1.0, 1),
    "use_beam_search": (False,),
    "include_reasoning": (True,),
    "watermarking": (False,),
    "stream_interval": (1,),
    "mm_payload": ("none",),  # asks for no multimodal payload
}
# Labels, not requests: any value changes nothing, so every engine takes them.
_LABELS = frozenset({"user", "session_id"})


def is_set(name: str, value: Any) -> bool:
    """Whether `value` for field `name` asks the engine for anything."""
    if value is None:
        return False
    if name in _LABELS:
        return False
    return value not in _NEUTRAL.get(name, ())


def refuse_unhonoured(
    request: GenerationRequest, engine: str, honoured: Collection[str], hint: str = ""
) -> None:
    """Raise UnsupportedParameter for the first set option not in `honoured`."""
    for name, value in request.options.items():
        if name not in honoured and is_set(name, value):
            raise UnsupportedParameter(name, engine, hint)


def refuse_non_text(request: GenerationRequest, engine: str) -> None:
    """A 400 naming the first content part that is not text (images, audio, ...)."""
    for i, message in enumerate(request.messages):
        if isinstance(message.content, tuple):
            for j, part in enumerate(message.content):
                if part.get("type") != "text":
                    raise InvalidGenerationRequest(
                        f"Content parts of type '{part.get('type')}' need a multimodal model; "
                        f"the {engine} engine serving this model takes text only.",
                        param=f"messages[{i}].content[{j}]",
                    )


_CONSTRAINT_WORDS = ("grammar", "regex", "schema", "json", "structural", "choice")


def blame_field(error: InvalidGenerationRequest, request: GenerationRequest) -> None:
    """Name the faulty field of an engine refusal that names none but speaks of one:
    the output constraint (vLLM reports grammar compile errors so), or the request's
    own chat template (which vLLM's server refuses unless it trusts request templates)."""
    if error.param is not None:
        return
    if "chat template" in error.message.lower() and "chat_template" in request.options:
        error.param = "chat_template"
        return
    if not any(w in error.message for w in _CONSTRAINT_WORDS):
        return
    structured = request.options.get("structured_outputs")
    if isinstance(structured, dict) and structured:
        error.param = f"structured_outputs.{next(iter(structured))}"
    elif "response_format" in request.options:
        error.param = "response_format"
    elif "tools" in request.options:
        error.param = "tools"


def blame_body_field(error: InvalidGenerationRequest, body: Mapping[str, Any]) -> None:
    """Name the faulty field of a refusal of a JSON body (embeddings, tokenize) that
    names none but speaks of one the client set: vLLM words some so ("... (received
    dimensions=32)", "Chat template is passed with request ...")."""
    if error.param is not None:
        return
    if "chat template" in error.message.lower() and "chat_template" in body:
        error.param = "chat_template"
        return
    named = [key for key in body if re.search(rf"\b{re.escape(key)}\b", error.message)]
    if len(named) == 1:
        error.param = named[0]
