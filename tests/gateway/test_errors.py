"""Every error leaves as an OpenAI error body with the right status; 422 never leaks."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from engines.scripted import ScriptedEngine
from gateway.app import create_app
from tests.gateway.conftest import scripted, settings
from tests.servers import serve, wait_until

CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hi"}]


def _tool(parameters: dict[str, object], name: str = "get_weather") -> dict[str, object]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


def _named(name: str) -> dict[str, object]:
    return {"type": "function", "function": {"name": name}}


def _schema_format(schema: dict[str, object]) -> dict[str, object]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


TOOL = _tool({"type": "object", "properties": {"city": {"type": "string"}}})


def assert_error(r: httpx.Response, status: int, param: str | None = None) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    assert "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "scripted", "messages": MSG, "max_tokens": -1}, "max_tokens"),
        ({"model": "scripted", "messages": MSG, "max_tokens": "5"}, "max_tokens"),
        ({"model": "scripted", "messages": MSG, "temperature": 3}, "temperature"),
        ({"model": "scripted", "messages": MSG, "n": 0}, "n"),
        ({"model": "scripted", "messages": MSG, "stream": "yes"}, "stream"),
        ({"model": "scripted", "messages": MSG, "stop": 5}, "stop"),
        ({"model": "scripted", "messages": MSG, "top_logprobs": 2}, "top_logprobs"),
        ({"model": "scripted", "messages": []}, "messages"),
        ({"model": "scripted", "messages": MSG * 1025}, "messages"),  # max_messages
        ({"model": "scripted", "messages": MSG, "stop": ["x"] * 17}, "stop"),
        ({"model": "scripted"}, "messages"),
        ({"messages": MSG}, "model"),
        ({"model": "scripted", "messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
        ({"model": "scripted", "messages": [{"role": "user", "content": None}]}, "messages[0]"),
        (
            {"model": "scripted", "messages": [{"role": "user", "content": [{}]}]},
            "messages[0].content",
        ),
        (
            {
                "model": "scripted",
                "messages": [{"role": "user", "content": [{"type": "image_url"}]}],
            },
            "messages[0].content[0]",  # the scripted engine is not multimodal
        ),
        (
            {"model": "scripted", "messages": MSG, "tools": [{"type": "function"}]},
            "tools[0].function",
        ),
        ({"model": "scripted", "messages": MSG, "tools": [TOOL] * 129}, "tools"),  # max_tools
        (
            {"model": "scripted", "messages": MSG, "tools": [_tool({"type": "objekt"})]},
            "tools[0].function.parameters",
        ),
        (
            {"model": "scripted", "messages": MSG, "tools": [_tool({"enum": ["x" * 9000]})]},
            "tools[0].function.parameters",  # max_schema_bytes
        ),
        ({"model": "scripted", "messages": MSG, "tool_choice": "required"}, "tool_choice"),
        (
            {"model": "scripted", "messages": MSG, "tools": [TOOL], "tool_choice": _named("nope")},
            "tool_choice",
        ),
        (
            {
                "model": "scripted",
                "messages": MSG,
                "tools": [TOOL],
                "functions": [TOOL["function"]],
            },
            "functions",
        ),
        (
            {"model": "scripted", "messages": MSG, "response_format": _schema_format({"type": 5})},
            "response_format.json_schema.schema",
        ),
        (
            {"model": "scripted", "messages": MSG, "response_format": {"type": "json_schema"}},
            "response_format",
        ),
        (
            {"model": "scripted", "messages": MSG, "structured_outputs": {"regex": "[a-"}},
            "structured_outputs.regex",
        ),
        (
            {
                "model": "scripted",
                "messages": MSG,
                "structured_outputs": {"regex": "a", "choice": ["b"]},
            },
            "structured_outputs",
        ),
        (
            {
                "model": "scripted",
                "messages": MSG,
                "guided_regex": "a",
                "structured_outputs": {"regex": "b"},
            },
            "guided_regex",
        ),
        ({"model": "scripted", "messages": MSG, "top_k": "5"}, "top_k"),
        ({"model": "scripted", "messages": MSG, "return_token_ids": True}, "return_token_ids"),
        (
            {"model": "scripted", "messages": MSG, "prompt_logprobs": 1, "stream": True},
            "prompt_logprobs",
        ),
        ({"model": "scripted", "messages": MSG, "prompt_logprobs": -2}, "prompt_logprobs"),
        # Valid, but the scripted engine honours none of these: refused by name.
        ({"model": "scripted", "messages": MSG, "top_k": 5}, "top_k"),
        ({"model": "scripted", "messages": MSG, "logit_bias": {"1": 5}}, "logit_bias"),
        ({"model": "scripted", "messages": MSG, "prompt_logprobs": 1}, "prompt_logprobs"),
        (
            {"model": "scripted", "messages": MSG, "thinking_token_budget": 8},
            "thinking_token_budget",
        ),
        ({"model": "scripted", "messages": MSG, "echo": True}, "echo"),
        ({"model": "scripted", "messages": MSG, "guided_choice": ["a"]}, "structured_outputs"),
        (
            {"model": "scripted", "messages": MSG, "response_format": {"type": "json_object"}},
            "response_format",
        ),
        ({"model": "scripted", "messages": MSG, "tools": [TOOL]}, "tools"),
    ],
)
def test_bad_chat_bodies_get_400_naming_the_field(
    base_url: str, body: dict[str, object], param: str
) -> None:
    assert_error(httpx.post(base_url + CHAT, json=body), 400, param)


def test_n_above_max_n_is_the_gateways_400() -> None:
    """Here the engine takes any n and `max_generations` allows 1000, so only the
    `max_n` check (16 by default) stands between n=1000 and the engine."""
    engine = scripted()
    app = create_app(settings(max_generations=2000), engines=[engine])
    with serve(app) as url:
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=10)
        chat = {"model": "scripted", "messages": MSG, "max_tokens": 1}
        completion = {"model": "scripted", "prompt": "hi", "max_tokens": 1}
        ok = httpx.post(url + CHAT, json={**chat, "n": 16})
        assert ok.status_code == 200, ok.text
        assert len(ok.json()["choices"]) == 16
        for n in (17, 1000):
            for path, body in ((CHAT, chat), ("/v1/completions", completion)):
                error = assert_error(httpx.post(url + path, json={**body, "n": n}), 400, "n")
                assert "at most 16" in str(error["message"]), error
        assert engine.generations == 1  # only the n=16 request reached it


def test_completions_bad_bodies(base_url: str) -> None:
    url = base_url + "/v1/completions"
    tokens = httpx.post(url, json={"model": "scripted", "prompt": [[1, 2], []]})
    assert_error(tokens, 400, "prompt[0]")
    assert_error(httpx.post(url, json={"model": "scripted", "prompt": []}), 400, "prompt")  # fuzz
    many = {"model": "scripted", "prompt": ["x"] * 1025}
    assert_error(httpx.post(url, json=many), 400, "prompt")
    assert_error(
        httpx.post(url, json={"model": "scripted", "prompt": "x", "echo": True}), 400, "echo"
    )
    assert_error(
        httpx.post(url, json={"model": "scripted", "prompt": "x", "best_of": 3}), 400, "best_of"
    )


def test_malformed_json(base_url: str) -> None:
    r = httpx.post(
        base_url + CHAT, content=b'{"model": ', headers={"content-type": "application/json"}
    )
    error = assert_error(r, 400)
    assert "not valid JSON" in str(error["message"])
    r = httpx.post(base_url + CHAT, content=b"[1, 2]")
    assert_error(r, 400)


def test_body_parsed_whatever_the_content_type(base_url: str) -> None:
    # curl -d sends application/x-www-form-urlencoded unless told otherwise.
    r = httpx.post(
        base_url + CHAT,
        content=b'{"model": "scripted", "messages": [{"role": "user", "content": "x"}]}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200


def test_unknown_model_is_404(base_url: str) -> None:
    error = assert_error(
        httpx.post(base_url + CHAT, json={"model": "gpt-9", "messages": MSG}), 404, "model"
    )
    assert error["code"] == "model_not_found"


def test_oversized_body_is_413(base_url: str) -> None:
    big = {"model": "scripted", "messages": [{"role": "user", "content": "x" * 100_000}]}
    assert_error(httpx.post(base_url + CHAT, json=big), 413)


def test_oversized_chunked_body_is_413(base_url: str) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"model": "scripted", "messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"}]}'

    assert_error(httpx.post(base_url + CHAT, content=body()), 413)


def test_context_length_exceeded(base_url: str) -> None:
    body = {"model": "scripted", "messages": MSG, "max_tokens": 10_000}
    error = assert_error(httpx.post(base_url + CHAT, json=body), 400)
    assert error["code"] == "context_length_exceeded"
    assert "4096" in str(error["message"])


def test_unknown_route_and_method(base_url: str) -> None:
    assert_error(httpx.get(base_url + "/v1/nothing"), 404)
    assert_error(httpx.get(base_url + CHAT), 405)


@pytest.fixture
def engine() -> ScriptedEngine:
    return scripted(unsupported=("n",))


def test_engine_refuses_what_it_cannot_honour(base_url: str) -> None:
    error = assert_error(
        httpx.post(base_url + CHAT, json={"model": "scripted", "messages": MSG, "n": 2}), 400, "n"
    )
    assert error["code"] == "unsupported_parameter"
    assert (
        httpx.post(base_url + CHAT, json={"model": "scripted", "messages": MSG}).status_code == 200
    )


def test_loading_engine_is_503_and_not_ready() -> None:
    slow = scripted(start_delay_s=30)
    app = create_app(settings(), engines=[slow])
    with serve(app) as url:
        assert httpx.get(url + "/health").json() == {"status": "ok"}
        assert_error(httpx.get(url + "/ready"), 503)
        assert_error(httpx.post(url + CHAT, json={"model": "scripted", "messages": MSG}), 503)


def test_engine_failure_mid_stream_ends_with_error_event() -> None:
    app = create_app(settings(), engines=[scripted(fail_after_tokens=2)])
    with serve(app) as url:
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=10)
        r = httpx.post(url + CHAT, json={"model": "scripted", "messages": MSG, "stream": True})
        assert r.status_code == 200
        blocks = [b for b in r.text.split("\n\n") if b]
        assert blocks[-1] == "data: [DONE]"
        assert '"error"' in blocks[-2]
        assert "scripted failure" in blocks[-2]
        # The same failure before any output keeps its status.
        r = httpx.post(url + CHAT, json={"model": "scripted", "messages": MSG})
        assert_error(r, 500)


@pytest.mark.parametrize("number", [-(2**63) - 1, 2**64])
def test_an_integer_beyond_64_bits_is_a_400(base_url: str, number: int) -> None:
    """Found by the fuzzer: orjson (the engines' wire) carries -2**63 .. 2**64-1."""
    body = {"model": "scripted", "prompt": "x", "guided_json": {"type": "object", "x": number}}
    error = assert_error(httpx.post(base_url + "/v1/completions", json=body), 400)
    assert "64 bits" in str(error["message"])
    body["guided_json"] = {"type": "object", "description": str(10**30)}  # in a string: fine
    assert httpx.post(base_url + "/v1/completions", json=body).status_code != 500
