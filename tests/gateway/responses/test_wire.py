"""The Responses API's wire format, parsed by OpenAI's own SDK, on the scripted engine
(the test double) behind a live gateway."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

HELLO = "The scripted engine says hello to you."


@pytest.fixture
def client(base_url: str) -> OpenAI:
    return OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)


def test_create_parses_as_the_sdks_response(client: OpenAI) -> None:
    response = client.responses.create(
        model="scripted", temperature=0, input="say hi", instructions="Be brief."
    )
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == HELLO
    (message,) = response.output
    assert message.type == "message"
    assert message.role == "assistant"
    assert response.instructions == "Be brief."
    assert response.usage is not None
    assert response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.store is True


def test_stream_events_accumulate_in_the_sdk(client: OpenAI) -> None:
    with client.responses.stream(model="scripted", temperature=0, input="say hi") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert kinds.count("response.output_text.delta") > 1
    assert final.output_text == HELLO


def test_sequence_numbers_count_from_zero(base_url: str) -> None:
    body = {"model": "scripted", "input": "say hi", "stream": True}
    with httpx.stream("POST", base_url + "/v1/responses", json=body) as r:
        text = r.read().decode()
    blocks = [b for b in text.split("\n\n") if b]
    assert all(b.startswith("event: ") for b in blocks)
    numbers = [int(b.split('"sequence_number":')[1].split(",")[0].rstrip("}")) for b in blocks]
    assert numbers == list(range(len(blocks)))
    assert "[DONE]" not in text


def test_retrieve_delete_and_input_items(client: OpenAI) -> None:
    first = client.responses.create(model="scripted", temperature=0, input="say hi")
    follow = client.responses.create(
        model="scripted",
        previous_response_id=first.id,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "again"}]}],
    )
    assert client.responses.retrieve(follow.id).output_text == follow.output_text
    items = client.responses.input_items.list(follow.id)
    assert [i.type for i in items.data] == ["message"]
    assert items.data[0].content[0].text == "again"  # type: ignore[union-attr]
    client.responses.delete(follow.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(follow.id)


def test_max_output_tokens_make_it_incomplete(client: OpenAI) -> None:
    response = client.responses.create(
        model="scripted", temperature=0, input="hi", max_output_tokens=2
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "web_search_preview"}]}, "tools[0].type"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, "tools[0].type"),
        ({"background": True}, "background"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"previous_response_id": "resp_missing"}, "previous_response_id"),
        ({"text": {"format": {"type": "json_schema"}}}, "text.format"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
    ],
)
def test_bad_input_is_named(base_url: str, body: dict[str, object], param: str) -> None:
    r = httpx.post(base_url + "/v1/responses", json={"model": "scripted", "input": "hi", **body})
    assert r.status_code in (400, 404), r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    assert error["message"]
