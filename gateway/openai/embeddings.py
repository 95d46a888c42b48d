"""Bodies of `POST /v1/embeddings`, `POST /tokenize` and `POST /detokenize`, as vLLM's
server takes them (its EmbeddingCompletionRequest and the chat forms beside it,
TokenizeCompletionRequest / TokenizeChatRequest, DetokenizeRequest): validated
strictly, unknown fields ignored.

Every field vLLM defines is declared (tests/gateway/test_vllm_surface.py fails on a
vLLM upgrade that adds one), so none is dropped silently: the set fields travel to the
engine as the JSON body (`wire()`), and the engine honours or refuses each; the few
whose results the gateway cannot relay are refused here with a 400 naming them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from gateway.errors import InvalidRequest
from gateway.openai.schemas import GATEWAY_REFUSED, ChatMessage, TokenId, Tool, _Strict

Conversation = Annotated[list[ChatMessage], Field(min_length=1)]
# vLLM's values (vllm.utils.serial_utils; tests/gateway/test_vllm_surface.py compares).
EmbedDType = Literal["float32", "float16", "bfloat16", "fp8_e4m3", "fp8_e5m2"]
Endianness = Literal["native", "big", "little"]
EncodingFormat = Literal["float", "base64", "bytes", "bytes_only"]

REFUSED = {
    "request_id": GATEWAY_REFUSED["request_id"],
    "encoding_format": "binary embeddings (bytes, bytes_only) are not relayed by this "
    "gateway; ask for float or base64",
}


class _Templated(_Strict):
    """vLLM's chat-template fields, for inputs given as conversations."""

    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None
    chat_template: str | None = None  # vLLM refuses it unless its server trusts it
    chat_template_kwargs: dict[str, Any] | None = None
    media_io_kwargs: dict[str, dict[str, Any]] | None = None
    mm_processor_kwargs: dict[str, Any] | None = None
    add_special_tokens: bool | None = None


class EmbeddingRequest(_Templated):
    """`input` is a text, texts, token ids, lists of token ids, a conversation or
    conversations; or `messages` (vLLM's spelling) a conversation or conversations."""

    model: str | None = None
    input: (
        str
        | list[str]
        | list[TokenId]
        | list[list[TokenId]]
        | list[ChatMessage]
        | list[Conversation]
        | None
    ) = None
    messages: Conversation | list[Conversation] | None = None
    encoding_format: EncodingFormat | None = None
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None
    # vLLM's extras.
    truncate_prompt_tokens: Annotated[int, Field(ge=-1)] | None = None
    truncation_side: Literal["left", "right"] | None = None
    padding: Literal["max_length", "do_not_pad"] | None = None
    priority: int | None = None
    cache_salt: str | None = None
    use_activation: bool | None = None
    embed_dtype: EmbedDType | None = None
    endianness: Endianness | None = None
    request_id: str | None = None  # refused

    @model_validator(mode="after")
    def _one_input(self) -> EmbeddingRequest:
        if (self.input is None) == (self.messages is None):
            raise ValueError("give exactly one of 'input' and 'messages'")
        return self

    def inputs(self) -> list[Any]:
        """The items embedded: one per text, token list or conversation."""
        value: Any = self.messages if self.messages is not None else self.input
        if isinstance(value, str) or (value and not isinstance(value[0], str | list)):
            return [value]  # one text, one list of token ids, one conversation
        return list(value or ())

    def conversations(self) -> list[list[ChatMessage]]:
        items = self.inputs()
        return [i for i in items if isinstance(i, list) and i and isinstance(i[0], ChatMessage)]


class TokenizeRequest(_Templated):
    model: str | None = None
    prompt: str | None = None
    messages: Conversation | None = None
    return_token_strs: bool | None = None
    tools: list[Tool] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' and 'messages'")
        return self


class DetokenizeRequest(_Strict):
    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0, le=2**63 - 1)]]


def embedding_body(body: EmbeddingRequest, max_inputs: int, max_messages: int) -> dict[str, Any]:
    """The engine's body for a valid request within the gateway's bounds, or a 400."""
    _refuse(body)
    inputs = body.inputs()
    param = "messages" if body.messages is not None else "input"
    if not inputs:
        raise InvalidRequest(f"'{param}' is empty: give at least one input.", param=param)
    if len(inputs) > max_inputs:
        raise InvalidRequest(
            f"{len(inputs)} inputs is more than this gateway takes in one request "
            f"({max_inputs}, max_embedding_inputs).",
            param=param,
        )
    for i, item in enumerate(inputs):
        if not item:
            where = param if isinstance(body.input, str) else f"{param}[{i}]"
            raise InvalidRequest(f"'{where}' is empty: embed at least one token.", param=param)
    for conversation in body.conversations():
        _bounded(conversation, max_messages, param)
    return wire(body)


def tokenize_body(body: TokenizeRequest, max_messages: int) -> dict[str, Any]:
    if body.messages is not None:
        _bounded(body.messages, max_messages, "messages")
    return wire(body)


def wire(body: _Strict) -> dict[str, Any]:
    """The fields the client set, as JSON, without `model` (the engine names its own)."""
    return body.model_dump(mode="json", exclude_unset=True, exclude={"model"}, by_alias=True)


def _refuse(body: EmbeddingRequest) -> None:
    refused = {
        "request_id": body.request_id is not None,
        "encoding_format": body.encoding_format in ("bytes", "bytes_only"),
    }
    for name, asked in refused.items():
        if asked:
            raise InvalidRequest(
                f"'{name}' is not supported: {REFUSED[name]}; remove it from the request.",
                param=name,
                code="unsupported_parameter",
            )


def _bounded(conversation: list[ChatMessage], limit: int, param: str) -> None:
    if len(conversation) > limit:
        raise InvalidRequest(
            f"{len(conversation)} messages is more than this gateway takes ({limit}).",
            param=param,
        )
