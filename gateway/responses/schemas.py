"""The `/v1/responses` body, as OpenAI and vLLM's server take it: validated strictly,
unknown fields ignored. Input items and tools are checked item by item where they
are turned into a conversation (gateway/responses/items.py), so errors name them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.openai.schemas import Penalty, StructuredOutputs, TokenId

_STRICT = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


class _Strict(BaseModel):
    model_config = _STRICT


class TextFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextConfig(_Strict):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class Reasoning(_Strict):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class ResponsesRequest(_Strict):
    """OpenAI's fields, then vLLM's extras (the chat fields of the same names)."""

    model: str
    input: str | Annotated[list[dict[str, Any]], Field(min_length=1)]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    include: list[str] | None = None
    store: bool = True
    previous_response_id: str | None = None
    metadata: Annotated[dict[str, str], Field(max_length=16)] | None = None
    reasoning: Reasoning | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    service_tier: str | None = None
    max_tool_calls: Annotated[int, Field(ge=1)] | None = None
    # Refused by name (REFUSED): state and prompts the gateway does not keep.
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    context_management: list[dict[str, Any]] | None = None
    # vLLM's extras, passed on under the chat request's names.
    top_k: int | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    seed: int | None = None
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    stop_token_ids: list[TokenId] | None = None
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None
    include_reasoning: bool | None = None
    structured_outputs: StructuredOutputs | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    cache_salt: str | None = None
    priority: int | None = None
    vllm_xargs: dict[str, Any] | None = None
    watermarking: bool | None = None
    session_id: str | None = None
    mm_processor_kwargs: dict[str, Any] | None = None
    media_io_kwargs: dict[str, dict[str, Any]] | None = None
    # vLLM's, refused like the chat path refuses them.
    request_id: str | None = None
    kv_transfer_params: dict[str, Any] | None = None
    ec_transfer_params: dict[str, Any] | None = None
    mm_payload: Literal["tensors", "none"] | None = None
    return_mm_kwargs: bool | None = None
    enable_response_messages: bool | None = None
    previous_input_messages: list[Any] | None = None


# Fields whose names and meaning are the chat request's: passed on as they are.
PASSED_ON = (
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "user",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "seed",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "skip_special_tokens",
    "include_stop_str_in_output",
    "include_reasoning",
    "structured_outputs",
    "chat_template_kwargs",
    "cache_salt",
    "priority",
    "vllm_xargs",
    "watermarking",
    "session_id",
    "mm_processor_kwargs",
    "media_io_kwargs",
    "request_id",
    "kv_transfer_params",
    "ec_transfer_params",
    "mm_payload",
    "return_mm_kwargs",
)

# Set to anything but their defaults, these get a 400 naming them.
REFUSED = {
    "background": "background responses are not served by this gateway; send background: false",
    "conversation": "the Conversations API is not served here; use previous_response_id",
    "prompt": "stored prompt templates are not served here; send instructions and input",
    "context_management": "server-side context compaction is not served here",
    "enable_response_messages": "raw engine messages are not relayed by this gateway",
    "previous_input_messages": "harmony message history is not taken; use previous_response_id",
}
