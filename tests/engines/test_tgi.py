"""The TGI engine against the TGI double (tests/doubles/tgi.py): no TGI can run on
this CPU-only machine, so this checks our side of TGI's documented API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from engines.errors import (
    EngineOverloaded,
    GenerationFailed,
    InvalidGenerationRequest,
    UnsupportedEndpoint,
    UnsupportedParameter,
)
from engines.openai_remote import OpenAIRemoteConfig
from engines.registry import EngineConfigError
from engines.tgi import TGIEngine
from engines.types import Adapter, Chunk, GenerationRequest, Message
from gateway.app import create_app
from gateway.settings import Settings
from tests.doubles.tgi import create_tgi_double
from tests.gateway.test_errors import assert_error
from tests.servers import serve, wait_until
from tests.settings import NO_AUTH


@pytest.fixture(scope="module")
def script() -> dict[str, Any]:
    return {}


@pytest.fixture(scope="module")
def double(script: dict[str, Any]) -> Iterator[tuple[str, Starlette]]:
    app = create_tgi_double(script)
    with serve(app) as url:
        yield url, app


@pytest.fixture
async def tgi(double: tuple[str, Starlette], script: dict[str, Any]):  # type: ignore[no-untyped-def]
    script.clear()
    engine = TGIEngine("tgi", "tgi-model", OpenAIRemoteConfig(url=double[0], enable_lora=True))
    await engine.start()
    yield engine
    await engine.aclose()


async def collect(engine: TGIEngine, request: GenerationRequest) -> list[Chunk]:
    return [chunk async for chunk in engine.generate(request)]


def sent(double: tuple[str, Starlette]) -> dict[str, Any]:
    """The last body the TGI double received."""
    body: dict[str, Any] = double[1].state.seen[-1]
    return body


def text(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def finishes(chunks: list[Chunk]) -> list[str]:
    return [c.finish_reason for c in chunks if c.finish_reason]


def calls(chunks: list[Chunk]) -> list[dict[str, Any]]:
    """The tool calls, their pieces reassembled by index as an OpenAI client does."""
    out: dict[int, dict[str, Any]] = {}
    for delta in (d for c in chunks for d in c.tool_calls):
        call = out.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
        call["id"] = call["id"] or delta.id
        call["name"] = call["name"] or delta.name
        call["arguments"] += delta.arguments
    return [out[i] for i in sorted(out)]


async def test_completion_streams_tokens_with_usage_from_details(
    tgi: TGIEngine, double: tuple[str, Starlette]
) -> None:
    assert (await tgi.health()).ok
    chunks = await collect(tgi, GenerationRequest("r", "one two three", temperature=0, seed=3))
    assert "".join(c.text for c in chunks) == "one two three"
    assert "</s>" not in "".join(c.text for c in chunks)  # special tokens are not text
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert sum(c.token_count for c in chunks) == 4  # three words and the EOS token
    assert max(c.prompt_tokens for c in chunks) == 3
    sent = double[1].state.seen[-1]["parameters"]
    assert sent["do_sample"] is False
    assert "temperature" not in sent  # TGI rejects temperature 0
    assert sent["seed"] == 3


async def test_length_finish_and_top_tokens(tgi: TGIEngine) -> None:
    chunks = await collect(tgi, GenerationRequest("r", "a b c d", max_tokens=2, logprobs=1))
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["length"]
    assert all(c.logprobs and c.logprobs[0].top for c in chunks if c.text)


async def test_adapter_is_sent_as_adapter_id_and_chat_model(
    tgi: TGIEngine, double: tuple[str, Starlette]
) -> None:
    adapter = Adapter("shout", "/adapters/shout", "0" * 64, 1)
    await tgi.load_adapter(adapter)
    completion = await collect(tgi, GenerationRequest("r", "hello there", adapter=adapter))
    assert "".join(c.text for c in completion).startswith("[shout]")
    assert double[1].state.seen[-1]["parameters"]["adapter_id"] == "shout"
    chat = (Message("user", "hi you"),)
    chunks = await collect(tgi, GenerationRequest("r", chat, adapter=adapter))
    assert "".join(c.text for c in chunks) == "[shout] hi you"
    assert double[1].state.seen[-1]["model"] == "shout"


async def test_chat_uses_the_messages_api(tgi: TGIEngine) -> None:
    chunks = await collect(tgi, GenerationRequest("r", (Message("user", "x y z"),)))
    assert "".join(c.text for c in chunks) == "x y z"
    assert sum(c.token_count for c in chunks) == 4
    assert max(c.prompt_tokens for c in chunks) == 3


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (GenerationRequest("r", "hi", n=2), "n"),
        (GenerationRequest("r", (Message("user", "hi"),), n=3), "n"),
        (GenerationRequest("r", "hi", presence_penalty=0.5), "presence_penalty"),
    ],
)
async def test_what_tgi_cannot_do_is_refused(
    tgi: TGIEngine, request_: GenerationRequest, param: str
) -> None:
    with pytest.raises(UnsupportedParameter) as info:
        await collect(tgi, request_)
    assert info.value.param == param


async def test_tgi_errors_map_onto_the_engine_errors(
    tgi: TGIEngine, script: dict[str, Any]
) -> None:
    with pytest.raises(InvalidGenerationRequest, match="must be <= 64"):
        await collect(tgi, GenerationRequest("r", "w " * 60, max_tokens=20))
    script["overloaded"] = True
    with pytest.raises(EngineOverloaded):
        await collect(tgi, GenerationRequest("r", "hi"))
    script.clear()
    script["fail_after"] = 1
    with pytest.raises(GenerationFailed, match="generation"):
        await collect(tgi, GenerationRequest("r", "a b c"))


@pytest.mark.parametrize(
    "prompt", ["w " * 60, (Message("system", "w " * 30), Message("user", "w " * 30))]
)
async def test_a_default_max_tokens_is_fitted_to_what_the_prompt_leaves(
    tgi: TGIEngine, double: tuple[str, Starlette], prompt: str | tuple[Message, ...]
) -> None:
    """The gateway's default max_tokens (fit_max_tokens) is lowered to TGI's
    max_total_tokens (64 here) less the prompt as TGI counts it, where the same
    max_tokens sent by the client is TGI's 422."""
    with pytest.raises(InvalidGenerationRequest, match="must be <= 64"):
        await collect(tgi, GenerationRequest("r", prompt, max_tokens=4096))
    fitted = GenerationRequest("r", prompt, max_tokens=4096, fit_max_tokens=True)
    chunks = await collect(tgi, fitted)
    counted, answered = double[1].state.seen[-2:]
    if isinstance(prompt, str):
        assert counted == {"inputs": prompt}
        assert answered["parameters"]["max_new_tokens"] == 4
    else:
        assert [m["content"] for m in counted["messages"]] == ["w " * 30] * 2
        assert answered["max_tokens"] == 4
    assert finishes(chunks) == ["length"]
    small = await collect(tgi, GenerationRequest("r", "a b", max_tokens=5, fit_max_tokens=True))
    assert text(small) == "a b"  # room to spare: sent as it was


def test_through_the_gateway_tgi_streams_and_refuses_n(
    double: tuple[str, Starlette], script: dict[str, Any]
) -> None:
    """The OpenAI API in front of the TGI double: a streamed completion, and n=2 as
    a 400 naming `n` (never a silent single choice)."""
    script.clear()
    settings = Settings(
        engines=[
            {"name": "tgi", "kind": "tgi", "model_id": "tgi-model", "options": {"url": double[0]}}
        ],
        auth=NO_AUTH,
    )
    app = create_app(settings)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=10)
        body = {"model": "tgi-model", "prompt": "one two three", "stream": True, "temperature": 0}
        with client.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        chunks = [json.loads(line[6:]) for line in lines[:-1]]
        assert "".join(c["text"] for chunk in chunks for c in chunk["choices"]) == "one two three"
        chat = {"model": "tgi-model", "messages": [{"role": "user", "content": "hi"}], "n": 2}
        error = assert_error(client.post("/v1/chat/completions", json=chat), 400, param="n")
        assert error["code"] == "unsupported_parameter"


# -- the OpenAI and vLLM options, mapped onto what TGI takes ------------------------

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time"}}  # no parameters
ASK = (Message("user", "what is the weather"),)


@pytest.mark.parametrize("incremental", [True, False])
async def test_json_schema_is_sent_as_tgi_grammar_on_completions(
    tgi: TGIEngine, double: tuple[str, Starlette], incremental: bool
) -> None:
    options = {"response_format": JSON_SCHEMA}
    request = GenerationRequest("r", "a city", options=options, incremental=incremental)
    chunks = await collect(tgi, request)
    assert sent(double)["parameters"]["grammar"] == {"type": "json", "value": SCHEMA}
    assert sent(double)["stream"] is True  # whole answers are assembled from the stream
    assert json.loads(text(chunks)) == {"city": "text", "days": 1}
    assert finishes(chunks) == ["stop"]


@pytest.mark.parametrize("incremental", [True, False])
async def test_json_schema_is_sent_as_tgi_response_format_on_chat(
    tgi: TGIEngine, double: tuple[str, Starlette], incremental: bool
) -> None:
    request = GenerationRequest(
        "r", ASK, options={"response_format": JSON_SCHEMA}, incremental=incremental
    )
    chunks = await collect(tgi, request)
    assert sent(double)["response_format"] == {"type": "json", "value": SCHEMA}
    assert sent(double).get("stream", False) is incremental
    assert json.loads(text(chunks)) == {"city": "text", "days": 1}
    assert sum(c.token_count for c in chunks) > 0


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize(
    ("structured", "grammar"),
    [
        ({"json": SCHEMA}, {"type": "json", "value": SCHEMA}),
        ({"json": json.dumps(SCHEMA)}, {"type": "json", "value": json.dumps(SCHEMA)}),
        ({"regex": "[a-z ]+"}, {"type": "regex", "value": "[a-z ]+"}),
    ],
)
async def test_structured_outputs_json_and_regex_become_tgi_grammars(
    tgi: TGIEngine,
    double: tuple[str, Starlette],
    chat: bool,
    structured: dict[str, Any],
    grammar: dict[str, Any],
) -> None:
    prompt: Any = (Message("user", "sunny and warm"),) if chat else "sunny and warm"
    chunks = await collect(
        tgi, GenerationRequest("r", prompt, options={"structured_outputs": structured})
    )
    body = sent(double)
    assert (body["response_format"] if chat else body["parameters"]["grammar"]) == grammar
    answer = text(chunks)
    if grammar["type"] == "regex":
        assert answer == "sunny and warm"
    else:
        assert json.loads(answer)["city"] == "text"


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("incremental", [True, False])
async def test_a_schema_tgi_rejects_is_the_clients_error(
    tgi: TGIEngine, chat: bool, incremental: bool
) -> None:
    """TGI validates grammars after the stream began (an error event) or before a whole
    answer (a 422): either way a 400 for the client, not a failed generation."""
    loose = {"type": "json_schema", "json_schema": {"name": "any", "schema": {"type": "object"}}}
    prompt: Any = ASK if chat else "a city"
    request = GenerationRequest(
        "r", prompt, options={"response_format": loose}, incremental=incremental
    )
    with pytest.raises(InvalidGenerationRequest, match="must have a 'properties' field") as info:
        await collect(tgi, request)
    assert not isinstance(info.value, UnsupportedParameter)


async def test_openais_json_schema_wrapper_is_what_tgi_cannot_read(
    double: tuple[str, Starlette],
) -> None:
    """Why the engine maps response_format: TGI's GrammarType wants `value`, and
    rejects OpenAI's shape as a body it cannot deserialize (the double as TGI does)."""
    body = {"model": "tgi", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=double[0]) as client:
        openai = await client.post(
            "/v1/chat/completions", json={**body, "response_format": JSON_SCHEMA}
        )
        native = await client.post(
            "/v1/chat/completions",
            json={**body, "response_format": {"type": "json", "value": SCHEMA}},
        )
    assert openai.status_code == 422
    assert "missing field `value`" in openai.text
    assert native.status_code == 200


@pytest.mark.parametrize("incremental", [True, False])
@pytest.mark.parametrize(
    ("tool_choice", "prompt"),
    [
        ({"type": "function", "function": {"name": "get_weather"}}, "hello"),
        ("required", "hello"),
        ("auto", "call get_weather for Paris"),
        (None, "call get_weather for Paris"),  # TGI's default with tools is auto
    ],
)
async def test_tool_calls_on_chat_reassemble(
    tgi: TGIEngine,
    double: tuple[str, Starlette],
    incremental: bool,
    tool_choice: Any,
    prompt: str,
) -> None:
    options: dict[str, Any] = {"tools": [WEATHER, CLOCK]}
    if tool_choice is not None:
        options["tool_choice"] = tool_choice
    request = GenerationRequest(
        "r", (Message("user", prompt),), options=options, incremental=incremental
    )
    chunks = await collect(tgi, request)
    body = sent(double)
    assert body["tools"][0] == WEATHER
    assert body["tools"][1]["function"]["parameters"] == {"type": "object", "properties": {}}
    assert body.get("tool_choice") == tool_choice
    [call] = calls(chunks)
    assert (call["id"], call["name"]) == ("0", "get_weather")
    assert json.loads(call["arguments"]) == {"city": "text", "unit": "celsius"}
    pieces = [d for c in chunks for d in c.tool_calls]
    assert (len(pieces) > 1) is incremental  # streamed in pieces
    assert [d.id for d in pieces[1:]] == [None] * (len(pieces) - 1)  # the id comes once
    assert text(chunks) == ""
    assert finishes(chunks) == ["tool_calls"]
    assert sum(c.token_count for c in chunks) > 0


@pytest.mark.parametrize("incremental", [True, False])
async def test_a_tool_without_parameters_is_called_with_an_empty_object(
    tgi: TGIEngine, incremental: bool
) -> None:
    options = {"tools": [CLOCK], "tool_choice": "required"}
    request = GenerationRequest("r", ASK, options=options, incremental=incremental)
    [call] = calls(await collect(tgi, request))
    assert call["name"] == "get_time"
    assert json.loads(call["arguments"]) == {}


@pytest.mark.parametrize("tool_choice", ["auto", "none"])
async def test_no_tool_call_answers_in_text(
    tgi: TGIEngine, double: tuple[str, Starlette], tool_choice: str
) -> None:
    """On auto TGI adds a `no_tool` function and answers in text when the model picks
    it; on none it calls nothing."""
    options = {"tools": [WEATHER], "tool_choice": tool_choice}
    chunks = await collect(
        tgi, GenerationRequest("r", (Message("user", "hi you"),), options=options)
    )
    assert sent(double)["tool_choice"] == tool_choice
    assert text(chunks) == "hi you"
    assert calls(chunks) == []
    assert finishes(chunks) == ["stop"]


async def test_a_conversation_with_tool_calls_is_sent_as_tgi_reads_it(
    tgi: TGIEngine, double: tuple[str, Starlette]
) -> None:
    """An assistant turn of tool calls goes without `content` (TGI's Message tries
    content first and would drop the calls), a tool turn without `tool_call_id`."""
    call = {"id": "0", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    conversation = (
        Message("user", "weather in Paris"),
        Message("assistant", None, tool_calls=(call,)),
        Message("tool", "sunny", tool_call_id="0"),
        Message("user", "and get_weather in Rome"),
    )
    options = {"tools": [WEATHER], "tool_choice": "auto", "parallel_tool_calls": False}
    chunks = await collect(tgi, GenerationRequest("r", conversation, options=options))
    messages = sent(double)["messages"]
    assert messages[1] == {"role": "assistant", "tool_calls": [call]}
    assert messages[2] == {"role": "tool", "content": "sunny"}
    assert "parallel_tool_calls" not in sent(double)  # TGI calls one tool at most anyway
    assert calls(chunks)[0]["id"] == "1"  # TGI counts on from the conversation's ids


async def test_top_k_and_repetition_penalty_on_completions(
    tgi: TGIEngine, double: tuple[str, Starlette]
) -> None:
    options = {"top_k": 5, "repetition_penalty": 1.2}
    await collect(tgi, GenerationRequest("r", "a b", temperature=0.7, options=options))
    parameters = sent(double)["parameters"]
    assert (parameters["top_k"], parameters["repetition_penalty"]) == (5, 1.2)
    assert parameters["do_sample"] is True
    await collect(tgi, GenerationRequest("r", "a b", temperature=0, options=options))
    parameters = sent(double)["parameters"]
    assert "top_k" not in parameters  # TGI samples whenever top_k is given
    assert parameters["repetition_penalty"] == 1.2
    assert parameters["do_sample"] is False
    neutral = {"top_k": -1, "repetition_penalty": 1.0}
    await collect(tgi, GenerationRequest("r", "a b", options=neutral))
    assert not {"top_k", "repetition_penalty"} & set(sent(double)["parameters"])


async def test_model_defaults_are_left_to_tgi(
    tgi: TGIEngine, double: tuple[str, Starlette]
) -> None:
    """No temperature means TGI's default (sampling at 1.0) on both paths; top_p 1 is
    no top_p (TGI rejects 1.0)."""
    await collect(tgi, GenerationRequest("r", "a b", top_p=1.0))
    parameters = sent(double)["parameters"]
    assert parameters["do_sample"] is True
    assert not {"temperature", "top_p"} & set(parameters)
    await collect(tgi, GenerationRequest("r", ASK, top_p=1.0))
    assert not {"temperature", "top_p"} & set(sent(double))
    await collect(tgi, GenerationRequest("r", ASK, temperature=0.5, top_p=0.9))
    assert (sent(double)["temperature"], sent(double)["top_p"]) == (0.5, 0.9)


@pytest.mark.parametrize(
    "request_",
    [
        GenerationRequest("r", "hi", options={"add_special_tokens": True}),
        GenerationRequest("r", ASK, options={"add_special_tokens": False}),
    ],
)
async def test_what_tgi_always_does_is_honoured(
    tgi: TGIEngine, double: tuple[str, Starlette], request_: GenerationRequest
) -> None:
    """TGI adds special tokens to a completion's prompt, never to a templated chat."""
    expected = "what is the weather" if request_.is_chat else "hi"
    assert text(await collect(tgi, request_)) == expected
    assert "add_special_tokens" not in json.dumps(sent(double))


def _opts(prompt: Any, **options: Any) -> GenerationRequest:
    return GenerationRequest("r", prompt, options=options)


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        # completions
        (_opts("hi", echo=True), "echo"),
        (_opts("hi", suffix="!"), "suffix"),
        (_opts("hi", logit_bias={"42": 5}), "logit_bias"),
        (_opts("hi", min_p=0.1), "min_p"),
        (_opts("hi", stop_token_ids=[2]), "stop_token_ids"),
        (_opts("hi", ignore_eos=True), "ignore_eos"),
        (_opts("hi", add_special_tokens=False), "add_special_tokens"),
        (_opts("hi", tools=[WEATHER]), "tools"),
        (_opts("hi", response_format={"type": "json_object"}), "response_format"),
        (_opts("hi", structured_outputs={"choice": ["a", "b"]}), "structured_outputs"),
        (
            _opts("hi", structured_outputs={"json": SCHEMA, "disable_any_whitespace": True}),
            "structured_outputs",
        ),
        (GenerationRequest("r", (1, 2, 3)), "prompt"),
        # chat
        (_opts(ASK, top_k=5), "top_k"),
        (_opts(ASK, repetition_penalty=1.2), "repetition_penalty"),
        (_opts(ASK, logit_bias={"42": 5}), "logit_bias"),
        (_opts(ASK, min_p=0.1), "min_p"),
        (_opts(ASK, chat_template_kwargs={"enable_thinking": False}), "chat_template_kwargs"),
        (_opts(ASK, reasoning_effort="low"), "reasoning_effort"),
        (_opts(ASK, add_special_tokens=True), "add_special_tokens"),
        (_opts(ASK, response_format={"type": "json_object"}), "response_format"),
        (_opts(ASK, structured_outputs={"grammar": "root ::= 'a'"}), "structured_outputs"),
        (_opts(ASK, response_format=JSON_SCHEMA, tools=[WEATHER]), "response_format"),
        (_opts(ASK, structured_outputs={"regex": "a"}, tools=[WEATHER]), "structured_outputs"),
        (
            _opts(ASK, response_format=JSON_SCHEMA, structured_outputs={"regex": "a"}),
            "structured_outputs",
        ),
        (
            GenerationRequest(
                "r",
                (Message("assistant", "let me look", tool_calls=({"id": "0"},)),),
                options={"tools": [WEATHER]},
            ),
            "messages",
        ),
        # both
        (GenerationRequest("r", "hi", n=2), "n"),
        (GenerationRequest("r", ASK, n=3), "n"),
        (GenerationRequest("r", "hi", presence_penalty=0.5), "presence_penalty"),
        (GenerationRequest("r", ASK, presence_penalty=0.5), "presence_penalty"),
    ],
)
async def test_what_tgi_cannot_do_is_refused_by_name_before_sending(
    tgi: TGIEngine, double: tuple[str, Starlette], request_: GenerationRequest, param: str
) -> None:
    received = len(double[1].state.seen)
    with pytest.raises(UnsupportedParameter) as info:
        await collect(tgi, request_)
    assert info.value.param == param
    assert "TGI" in info.value.message
    assert len(double[1].state.seen) == received


async def test_tool_choice_without_tools_is_the_clients_error(tgi: TGIEngine) -> None:
    with pytest.raises(InvalidGenerationRequest) as info:
        await collect(tgi, _opts(ASK, tool_choice="required"))
    assert info.value.param == "tool_choice"


@pytest.mark.parametrize("incremental", [True, False])
async def test_tgi_chat_errors_map_onto_the_engine_errors(
    tgi: TGIEngine, script: dict[str, Any], incremental: bool
) -> None:
    """A streamed chat reports failures as `{"error": {"message", "http_status_code":
    422}}` events whatever they are; a whole answer with a status."""
    too_many_stops = GenerationRequest("r", ASK, stop=tuple("abcde"), incremental=incremental)
    with pytest.raises(InvalidGenerationRequest, match="up to 4 stop sequences"):
        await collect(tgi, too_many_stops)
    script["overloaded"] = True
    with pytest.raises(EngineOverloaded):
        await collect(tgi, GenerationRequest("r", ASK, incremental=incremental))
    script.clear()
    unknown = {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}}
    with pytest.raises(InvalidGenerationRequest, match="Tool with name x not found"):
        await collect(tgi, GenerationRequest("r", ASK, options=unknown, incremental=incremental))


async def test_whole_chat_answer_without_streaming(
    tgi: TGIEngine, double: tuple[str, Starlette]
) -> None:
    chunks = await collect(
        tgi, GenerationRequest("r", (Message("user", "x y z"),), incremental=False)
    )
    assert "stream" not in sent(double)
    assert text(chunks) == "x y z"
    assert finishes(chunks) == ["stop"]
    assert (sum(c.token_count for c in chunks), max(c.prompt_tokens for c in chunks)) == (4, 3)


async def test_tgi_serves_no_embeddings_nor_tokenizer(tgi: TGIEngine) -> None:
    for call, api in (
        (tgi.embed({"input": "a"}, None), "Embeddings API"),
        (tgi.tokenize({"prompt": "a"}, None), "Tokenize API"),
        (tgi.detokenize({"tokens": [1]}, None), "Detokenize API"),
    ):
        with pytest.raises(UnsupportedEndpoint) as refused:
            await call
        assert api in refused.value.message
        assert "TGI" in refused.value.message
        assert refused.value.param == "model"
    with pytest.raises(EngineConfigError, match="TGI has no embeddings"):
        TGIEngine("tgi", "m", OpenAIRemoteConfig(url="http://127.0.0.1:1", serves=("embed",)))
