"""OpenAI request bodies, as vLLM's server takes them: validated strictly (no "5" for
5), unknown fields ignored (as OpenAI's SDKs expect of a server).

Every field OpenAI or vLLM defines for these endpoints is declared, so none is ever
dropped silently: the sampling core is read by the gateway itself; every other field
travels to the engine as an option (`options()`), which honours it or refuses it with
a 400 naming it. Fields whose results the gateway cannot relay are refused here
(`GATEWAY_REFUSED`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engines import options as engine_options

_STRICT = ConfigDict(strict=True, extra="ignore", populate_by_name=True)

Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
TokenId = Annotated[int, Field(ge=0)]
FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_.\-]{1,64}$")]

# Fields OpenAI or vLLM define whose output the gateway does not relay (yet): a 400
# naming them rather than an answer missing what they ask for.
GATEWAY_REFUSED = {
    "return_token_ids": "token ids are not relayed by this gateway",
    "return_tokens_as_token_ids": "token ids are not relayed by this gateway",
    "return_token_offsets": "token offsets are not relayed by this gateway",
    "return_prompt_text": "the rendered prompt is not relayed by this gateway",
    "logprob_token_ids": "logprobs of chosen token ids are not relayed by this gateway",
    "routed_experts_prompt_start": "routed-expert data is not relayed by this gateway",
    "request_id": "the gateway names each request; send it as the X-Request-Id header",
    "ec_transfer_params": "disaggregated encoding is not routed by this gateway",
    "mm_payload": "multimodal render payloads are not relayed by this gateway",
    "return_mm_kwargs": "multimodal render payloads are not relayed by this gateway",
    "prompt_embeds": "prompt embeddings are not accepted by this gateway",
    "kv_transfer_params": "disaggregated prefill is not routed by this gateway",
    "audio": "audio output is not served here",
    "modalities": "only text output is served here",
    "prediction": "predicted outputs are not served here",
    "web_search_options": "web search is not served here",
}


class _Strict(BaseModel):
    model_config = _STRICT


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    """One message. `content` is text, content parts, or null for an assistant turn
    made of tool calls; a `tool` message answers the call named by `tool_call_id`."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCall | None = None  # legacy assistant turns

    @field_validator("content")
    @classmethod
    def _parts(cls, value: Any) -> Any:
        for i, part in enumerate(value if isinstance(value, list) else ()):
            kind = part.get("type")
            if not isinstance(kind, str):
                raise ValueError(f"content part {i} has no 'type'")
            if kind == "text" and not isinstance(part.get("text"), str):
                raise ValueError(f"content part {i} of type 'text' needs a string 'text'")
        return value

    @model_validator(mode="after")
    def _shape(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError(
                "a 'tool' message needs 'tool_call_id': the id of the tool call it answers"
            )
        if self.role == "function" and not self.name:
            raise ValueError("a 'function' message needs 'name': the function that answered")
        if self.content is None and not (
            self.role == "assistant" and (self.tool_calls or self.function_call)
        ):
            raise ValueError("'content' may be null only in an assistant message with 'tool_calls'")
        return self

    def wire_tool_calls(self) -> list[dict[str, Any]]:
        calls = [c.model_dump() for c in self.tool_calls or ()]
        if self.function_call is not None:
            calls.append(
                {"id": "call_0", "type": "function", "function": self.function_call.model_dump()}
            )
        return calls


class FunctionDefinition(_Strict):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(_Strict):
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type 'json_schema' needs 'json_schema'")
        return self


class StructuredOutputs(_Strict):
    """vLLM's `structured_outputs`: exactly one constraint."""

    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | None = None
    disable_any_whitespace: bool | None = None
    disable_additional_properties: bool | None = None
    whitespace_pattern: str | None = None

    @model_validator(mode="after")
    def _one(self) -> StructuredOutputs:
        kinds = ("json_", "regex", "choice", "grammar", "json_object", "structural_tag")
        given = [k.rstrip("_") for k in kinds if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            raise ValueError(
                "structured_outputs takes exactly one of json, regex, choice, grammar, "
                f"json_object, structural_tag; got {given or 'none'}"
            )
        return self


class StreamOptions(_Strict):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class _Sampling(_Strict):
    """Fields shared by chat and completions: OpenAI's, then vLLM's extras."""

    model: str
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1)] | None = None
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    seed: int | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    response_format: ResponseFormat | None = None
    # vLLM's extras, accepted at the top level as its server accepts them.
    top_k: int | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0)] | None = None
    length_penalty: float | None = None
    min_tokens: Annotated[int, Field(ge=0)] | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[TokenId] | None = None
    include_stop_str_in_output: bool | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    truncate_prompt_tokens: Annotated[int, Field(ge=-1)] | None = None
    bad_words: list[str] | None = None
    allowed_token_ids: list[TokenId] | None = None
    structured_outputs: StructuredOutputs | None = None
    priority: int | None = None
    add_special_tokens: bool | None = None
    cache_salt: str | None = None
    vllm_xargs: dict[str, Any] | None = None
    use_beam_search: bool | None = None
    prompt_logprobs: Annotated[int, Field(ge=-1)] | None = None  # whole answers only
    thinking_token_budget: Annotated[int, Field(ge=-1)] | None = None
    repetition_detection: dict[str, Any] | None = None
    truncation_side: Literal["left", "right"] | None = None
    stream_interval: Annotated[int, Field(ge=1)] | None = None
    watermarking: bool | None = None
    session_id: str | None = None
    # vLLM's older spellings of structured_outputs (removed in vLLM 0.12; translated).
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    # Refused by name (GATEWAY_REFUSED).
    return_token_ids: bool | None = None
    return_tokens_as_token_ids: bool | None = None
    kv_transfer_params: dict[str, Any] | None = None
    return_token_offsets: bool | None = None
    logprob_token_ids: list[TokenId] | None = None
    routed_experts_prompt_start: int | None = None
    request_id: str | None = None
    ec_transfer_params: dict[str, Any] | None = None
    mm_payload: Literal["tensors", "none"] | None = None
    return_mm_kwargs: bool | None = None

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def options(self) -> dict[str, Any]:
        """The set option fields (engines/options.py) as JSON, by wire name."""
        names = engine_options.ALL & self.model_fields_set
        return self.model_dump(include=set(names), by_alias=True, exclude_none=True)


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDefinition] | None = None  # legacy tools
    function_call: Literal["none", "auto"] | NamedFunction | None = None  # legacy
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    include_reasoning: bool | None = None
    documents: list[dict[str, str]] | None = None
    chat_template: str | None = None  # vLLM refuses it unless its server trusts it
    echo: bool | None = None  # vLLM: prepend the last message when it is the assistant's
    mm_processor_kwargs: dict[str, Any] | None = None
    media_io_kwargs: dict[str, dict[str, Any]] | None = None
    return_prompt_text: bool | None = None  # refused (GATEWAY_REFUSED)
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    web_search_options: Any = None


class CompletionRequest(_Sampling):
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1)]
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)]
    )
    max_tokens: Annotated[int, Field(ge=1)] | None = 16
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    echo: bool | None = None
    best_of: Annotated[int, Field(ge=1)] | None = None
    suffix: str | None = None
    prompt_embeds: Any = None  # refused (GATEWAY_REFUSED)
