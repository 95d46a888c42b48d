"""Nothing vLLM's server takes is dropped without a word: every field of vLLM's own
request models is declared at the gateway's edge (so it is forwarded, honoured or
refused by name), and the refused ones get a 400 naming them. Fails on a vLLM upgrade
that adds a field, until the field is given a place here."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from pydantic import BaseModel

from engines import options
from gateway.errors import InvalidRequest
from gateway.openai import convert
from gateway.openai.schemas import GATEWAY_REFUSED, ChatCompletionRequest, CompletionRequest


def _vllm_models() -> list[tuple[type[BaseModel], type[BaseModel]]]:
    from vllm.entrypoints.openai.chat_completion.protocol import (
        ChatCompletionRequest as VLLMChat,
    )
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest as VLLMCompletion

    return [(ChatCompletionRequest, VLLMChat), (CompletionRequest, VLLMCompletion)]


def test_every_field_of_vllms_requests_is_declared() -> None:
    for ours, theirs in _vllm_models():
        missing = sorted(set(theirs.model_fields) - set(ours.model_fields))
        assert not missing, f"{ours.__name__} silently drops vLLM's {missing}"


def test_declared_fields_are_options_core_or_refused() -> None:
    """A declared field reaches the engine as an option, is part of the sampling core
    the gateway maps itself, or is refused at the edge: there is no fourth way."""
    core = {"model", "messages", "prompt", "temperature", "top_p", "n", "stop", "seed",
            "presence_penalty", "frequency_penalty", "stream", "stream_options",
            "max_tokens", "max_completion_tokens", "logprobs", "top_logprobs", "best_of",
            "functions", "function_call", "guided_json", "guided_regex", "guided_choice",
            "guided_grammar"}  # fmt: skip
    for model in (ChatCompletionRequest, CompletionRequest):
        unplaced = set(model.model_fields) - core - options.ALL - set(GATEWAY_REFUSED)
        assert not unplaced, f"{model.__name__}: {sorted(unplaced)} go nowhere"


# A value that asks for something, per refused field (True where it is a flag).
ASKING: dict[str, Any] = {
    "logprob_token_ids": [1],
    "request_id": "mine",
    "kv_transfer_params": {"a": 1},
    "ec_transfer_params": {"a": 1},
    "routed_experts_prompt_start": 2,
    "mm_payload": "tensors",
    "prompt_embeds": "ZW1iZWRkaW5ncw==",
}


def _convert(body: dict[str, Any]) -> None:
    if "prompt" in body:
        completion = CompletionRequest.model_validate(body)
        convert.completion_requests(completion, "rid", convert.Bounds())
    else:
        chat = ChatCompletionRequest.model_validate(body)
        convert.chat_request(chat, "rid", convert.Bounds())


@pytest.mark.parametrize("name", sorted(GATEWAY_REFUSED))
def test_refused_fields_get_a_400_naming_them(name: str) -> None:
    body: dict[str, Any] = {"model": "m", name: ASKING.get(name, True)}
    if name in ChatCompletionRequest.model_fields:
        body["messages"] = [{"role": "user", "content": "hi"}]
    else:
        body["prompt"] = "hi"
    with pytest.raises(InvalidRequest) as refused:
        _convert(body)
    assert refused.value.param == name


def test_asking_for_less_is_not_refused() -> None:
    """`mm_payload: "none"` asks vLLM for no multimodal payload: nothing to relay."""
    _convert({"model": "m", "messages": [{"role": "user", "content": "hi"}], "mm_payload": "none"})


def test_every_field_of_vllms_embedding_and_tokenizer_requests_is_declared() -> None:
    from vllm.entrypoints.pooling.embed import protocol as embed
    from vllm.entrypoints.serve.tokenize import protocol as tokenize

    from gateway.openai import embeddings as ours

    pairs = [
        (ours.EmbeddingRequest, embed.EmbeddingCompletionRequest),
        (ours.EmbeddingRequest, embed.EmbeddingChatRequest),
        (ours.EmbeddingRequest, embed.EmbeddingBatchChatRequest),
        (ours.EmbeddingRequest, embed.EmbeddingChatInputRequest),
        (ours.EmbeddingRequest, embed.EmbeddingBatchChatInputRequest),
        (ours.TokenizeRequest, tokenize.TokenizeCompletionRequest),
        (ours.TokenizeRequest, tokenize.TokenizeChatRequest),
        (ours.DetokenizeRequest, tokenize.DetokenizeRequest),
    ]
    for mine, theirs in pairs:
        missing = sorted(set(theirs.model_fields) - set(mine.model_fields))
        assert not missing, f"{mine.__name__} silently drops vLLM's {missing}"
    from vllm.utils import serial_utils

    for name in ("EmbedDType", "Endianness", "EncodingFormat"):
        assert get_args(getattr(ours, name)) == get_args(getattr(serial_utils, name)), name
    # The union vLLM's /v1/embeddings validates against has no other member.
    members = {m.__name__ for m in _union_members(embed.EmbeddingRequest)}
    assert members == {theirs.__name__ for mine, theirs in pairs[:5]}


def _union_members(alias: Any) -> list[type[BaseModel]]:
    union = get_args(alias)[0]  # Annotated[Union[...], validator]
    return list(get_args(union))
