"""The openai_remote engine against a real OpenAI-compatible server on loopback: a
Switchyard gateway serving the scripted engine (uvicorn, real HTTP and SSE)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from engines.errors import (
    AdapterMissing,
    EngineDisconnected,
    EngineTimedOut,
    EngineUnavailable,
    EngineUnreachable,
    GenerationFailed,
    InvalidGenerationRequest,
    UnsupportedEndpoint,
)
from engines.openai_remote import OpenAIRemoteConfig, OpenAIRemoteEngine
from engines.openai_wire import coalesced
from engines.scripted import ScriptedConfig, ScriptedEngine
from engines.types import Adapter, Chunk, GenerationRequest, Message, ToolCallDelta
from gateway.app import create_app
from gateway.settings import Settings
from tests.doubles.vllm import VLLMServerDouble
from tests.servers import free_port, serve, wait_until
from tests.settings import NO_AUTH

CHAT = (Message("user", "the quick brown fox"),)


@contextlib.contextmanager
def upstream(**options: Any) -> Iterator[str]:
    with upstream_of(ScriptedEngine("up", "up-model", ScriptedConfig(**options))) as url:
        yield url


@contextlib.contextmanager
def upstream_of(engine: ScriptedEngine) -> Iterator[str]:
    """A gateway in front of `engine`, which the test can watch."""
    app = create_app(Settings(auth=NO_AUTH), engines=[engine])
    with serve(app) as url:
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=10)
        yield url


@contextlib.asynccontextmanager
async def remote(url: str, **options: Any) -> AsyncIterator[OpenAIRemoteEngine]:
    # The upstream is a gateway, which relays no token ids.
    config = OpenAIRemoteConfig(
        url=url, upstream_model="up-model", **{"token_ids": False, **options}
    )
    engine = OpenAIRemoteEngine("remote", "gw-model", config)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.aclose()


async def collect(engine: OpenAIRemoteEngine, request: GenerationRequest) -> list[Chunk]:
    return [chunk async for chunk in engine.generate(request)]


async def collect_until_error(
    engine: OpenAIRemoteEngine, request: GenerationRequest, chunks: list[Chunk]
) -> None:
    async for chunk in engine.generate(request):
        chunks.append(chunk)


async def eventually(predicate: Callable[[], bool]) -> bool:
    """`wait_until` (10 s) with this event loop running meanwhile: the engine under
    test closes its connections on it."""
    for _ in range(200):
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


def text(chunks: list[Chunk], index: int = 0) -> str:
    return "".join(c.text for c in chunks if c.index == index)


@pytest.fixture(scope="module")
def echo_url() -> Iterator[str]:
    with upstream(reply=None) as url:
        yield url


async def test_chat_and_completion_stream_with_usage(echo_url: str) -> None:
    async with remote(echo_url + "/v1") as engine:
        assert (await engine.health()).ok
        chat = await collect(engine, GenerationRequest("r1", CHAT, temperature=0))
        assert text(chat) == "the quick brown fox"
        assert chat[-1].prompt_tokens > 0
        assert sum(c.token_count for c in chat) == 4
        assert [c.finish_reason for c in chat if c.finish_reason] == ["stop"]

        completion = await collect(
            engine, GenerationRequest("r2", "one two three", max_tokens=2, temperature=0)
        )
        assert text(completion) == "one two"
        assert [c.finish_reason for c in completion if c.finish_reason] == ["length"]
        assert sum(c.token_count for c in completion) == 2


async def test_n_stop_seed_and_logprobs_pass_through(echo_url: str) -> None:
    async with remote(echo_url) as engine:
        request = GenerationRequest(
            "r", CHAT, n=2, temperature=1.0, seed=7, stop=(" fox",), logprobs=1
        )
        chunks = await collect(engine, request)
        for index in (0, 1):
            assert " fox" not in text(chunks, index)
            assert any(c.logprobs for c in chunks if c.index == index)
        again = await collect(engine, request)
        assert text(again, 0) == text(chunks, 0)  # the seed travelled

        completion = await collect(
            engine, GenerationRequest("c", "a b c", logprobs=2, temperature=0)
        )
        assert all(len(c.logprobs[0].top) == 2 for c in completion if c.text)


async def test_upstream_400_is_the_clients_error(echo_url: str) -> None:
    async with remote(echo_url) as engine:
        with pytest.raises(InvalidGenerationRequest) as info:
            await collect(engine, GenerationRequest("r", CHAT, max_tokens=10**6))
        assert "maximum context length" in info.value.message


async def test_unknown_upstream_model_is_unavailable_not_client_error(echo_url: str) -> None:
    config = OpenAIRemoteConfig(url=echo_url, upstream_model="nope", token_ids=False)
    engine = OpenAIRemoteEngine("remote", "gw-model", config)
    await engine.start()
    try:
        with pytest.raises(EngineUnavailable, match="404"):
            await collect(engine, GenerationRequest("r", CHAT))
    finally:
        await engine.aclose()


async def test_connection_refused_is_unreachable() -> None:
    async with remote(f"http://127.0.0.1:{free_port()}", connect_timeout_s=1) as engine:
        assert not (await engine.health()).ok
        with pytest.raises(EngineUnreachable):
            await collect(engine, GenerationRequest("r", CHAT))


async def test_an_upstream_that_hangs_up_is_disconnected() -> None:
    """A killed replica's connections close without an answer: ejected at once."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, remote(f"http://127.0.0.1:{port}") as engine:
        with pytest.raises(EngineDisconnected, match="broke"):
            await collect(engine, GenerationRequest("r", CHAT))


async def test_first_token_and_idle_timeouts() -> None:
    """Each timeout is the error raised, and the request it gave up on is abandoned
    upstream (the upstream's engine aborts it) long before that would answer."""
    silent = ScriptedEngine("up", "up-model", ScriptedConfig(first_token_delay_s=60))
    with upstream_of(silent) as url:
        async with remote(url, first_token_timeout_s=0.5) as engine:
            chunks: list[Chunk] = []
            with pytest.raises(EngineTimedOut, match="first_token_timeout_s"):
                await collect_until_error(engine, GenerationRequest("r", CHAT), chunks)
            assert chunks == []  # nothing came before the timeout
            assert await eventually(lambda: silent.aborted == 1)
            assert silent.running == 0
    slow = ScriptedEngine("up", "up-model", ScriptedConfig(token_delay_s=60))
    with upstream_of(slow) as url:
        async with remote(url, idle_timeout_s=0.5) as engine:
            chunks = []
            with pytest.raises(EngineTimedOut, match="idle_timeout_s"):
                await collect_until_error(engine, GenerationRequest("r", CHAT), chunks)
            assert len([c for c in chunks if c.text]) == 1  # the first token, then nothing
            assert await eventually(lambda: slow.aborted == 1)
            assert slow.running == 0


async def test_an_upstream_that_restarted_without_its_adapters_is_a_new_instance() -> None:
    double = VLLMServerDouble()
    adapter = Adapter("a1", "/adapters/a1", "f" * 64, 1)
    request = GenerationRequest("r", CHAT, adapter=adapter)
    with serve(double.app()) as url:
        async with remote(url, enable_lora=True) as engine:
            await engine.load_adapter(adapter)
            before = await engine.health()
            assert before.ok
            assert (await engine.health()).instance == before.instance
            double.restart()
            after = await engine.health()
            assert after.ok
            assert after.instance != before.instance
            with pytest.raises(AdapterMissing):  # vLLM's 404 for a model it lacks
                await collect(engine, request)
            await engine.load_adapter(adapter)  # what the gateway's restore does
            assert (await engine.health()).instance == after.instance
            assert text(await collect(engine, request)) == "hello there"


async def test_a_default_max_tokens_is_held_to_the_upstreams_context() -> None:
    """vLLM refuses a max_tokens over max_model_len: a default (fit_max_tokens) is
    lowered to the context its model card says, read once; a client's own is sent as
    it is, and refused as vllm serve refuses it."""
    double = VLLMServerDouble(max_model_len=64)
    with serve(double.app()) as url:
        async with remote(url) as engine:
            for _ in range(2):
                fitted = GenerationRequest("r", CHAT, max_tokens=4096, fit_max_tokens=True)
                assert text(await collect(engine, fitted)) == "hello there"
                assert double.bodies[-1]["max_tokens"] == 64
            with pytest.raises(InvalidGenerationRequest, match="max_model_len=64"):
                await collect(engine, GenerationRequest("r", CHAT, max_tokens=4096))


@pytest.mark.parametrize("quiet", ["before_headers_s", "before_first_event_s"])
async def test_the_first_token_timeout_governs_until_the_first_event(quiet: str) -> None:
    """An upstream silent for longer than idle_timeout_s before its first event (its
    queue, the prefill) is still within first_token_timeout_s, whether it sent its
    headers or nothing at all; the idle timeout starts with the first event."""
    double = VLLMServerDouble(**{quiet: 1.0})
    with serve(double.app()) as url:
        async with remote(url, first_token_timeout_s=5, idle_timeout_s=0.3) as engine:
            chunks = await collect(engine, GenerationRequest("r", CHAT))
    assert text(chunks) == "hello there"


async def test_a_whole_answer_may_take_longer_than_the_idle_timeout() -> None:
    """A non-streamed answer comes in one piece after the whole generation; the
    upstream answering its /health meanwhile is what keeps it waited for."""
    double = VLLMServerDouble(before_headers_s=1.0)
    with serve(double.app()) as url:
        async with remote(url, idle_timeout_s=0.3) as engine:
            chunks = await collect(engine, GenerationRequest("r", CHAT, incremental=False))
    assert text(chunks) == "hello there"


async def test_a_whole_answer_from_a_frozen_upstream_is_given_up() -> None:
    """SIGSTOP: no answer and no /health either; given up after the idle timeout and
    its health check, not after total_timeout_s (found by the frozen-replica test)."""
    double = VLLMServerDouble(frozen=True)
    with serve(double.app()) as url:
        async with remote(url, idle_timeout_s=0.3, total_timeout_s=60) as engine:
            with pytest.raises(EngineUnavailable, match="idle_timeout_s"):
                await collect(engine, GenerationRequest("r", CHAT, incremental=False))
        double.frozen = False


async def test_failure_mid_stream_is_generation_failed() -> None:
    with upstream(fail_after_tokens=2) as url:
        async with remote(url) as engine:
            chunks: list[Chunk] = []
            with pytest.raises(GenerationFailed, match="scripted failure"):
                await collect_until_error(engine, GenerationRequest("r", CHAT), chunks)
            # The two tokens before the failure come first (joined when they arrive together).
            assert sum(c.token_count for c in chunks if c.text) == 2


async def test_closing_the_stream_aborts_the_upstream_request() -> None:
    engine = ScriptedEngine("up", "up-model", ScriptedConfig(token_delay_s=0.05, reply="a " * 200))
    app = create_app(Settings(auth=NO_AUTH), engines=[engine])
    with serve(app) as url:
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=10)
        async with remote(url) as client:
            stream = client.generate(GenerationRequest("r", CHAT))
            await anext(stream)
            await stream.aclose()
            for _ in range(100):  # the server notices the closed connection
                if engine.aborted:
                    break
                await asyncio.sleep(0.05)
            assert engine.aborted == 1
            assert engine.running == 0


@pytest.fixture(scope="module")
def embed_url() -> Iterator[str]:
    """An upstream whose `up-model` serves embeddings only (as `vllm serve --runner
    pooling`), beside another model: a body must name its model there."""
    engines = [
        ScriptedEngine("up", "up-model", ScriptedConfig(serves=("embed",), embedding_size=4)),
        ScriptedEngine("other", "other-model", ScriptedConfig()),
    ]
    app = create_app(Settings(auth=NO_AUTH), engines=engines)
    with serve(app) as url:
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=10)
        yield url


async def test_embeddings_and_tokens_are_forwarded_under_the_upstream_name(
    embed_url: str,
) -> None:
    async with remote(embed_url, serves=("embed",)) as engine:
        answer = await engine.embed({"input": ["a", "b"], "encoding_format": "base64"}, None)
        assert answer["model"] == "up-model"  # the upstream's name; the gateway renames it
        assert [d["index"] for d in answer["data"]] == [0, 1]
        assert all(isinstance(d["embedding"], str) for d in answer["data"])
        assert answer["usage"]["prompt_tokens"] == 2
        tokens = await engine.tokenize({"prompt": "hi"}, None)
        assert tokens["tokens"] == [104, 105]
        assert await engine.detokenize({"tokens": [104, 105]}, None) == {"prompt": "hi"}


async def test_upstream_refusals_and_what_it_does_not_serve(embed_url: str) -> None:
    async with remote(embed_url, serves=("embed",)) as engine:
        with pytest.raises(InvalidGenerationRequest) as refused:
            await engine.embed({"input": "a", "dimensions": 99}, None)
        assert refused.value.param == "dimensions"
        with pytest.raises(UnsupportedEndpoint, match="Chat Completions API"):
            await collect(engine, GenerationRequest("r", CHAT))
    async with remote(embed_url) as engine:  # configured as a generating upstream
        with pytest.raises(UnsupportedEndpoint, match="Embeddings API"):
            await engine.embed({"input": "a"}, None)


async def test_a_malformed_embeddings_answer_is_unavailable(echo_url: str) -> None:
    """An upstream answering without `data` is broken, not the client's fault."""
    async with remote(echo_url, serves=("embed",)) as engine:
        with pytest.raises(InvalidGenerationRequest, match="Embeddings API"):
            await engine.embed({"input": "a"}, None)  # the upstream refuses: generates only
        with pytest.raises(EngineUnavailable, match="malformed"):
            await engine.post_json("/tokenize", {"prompt": "a", "model": "up-model"}, "data")


def untrusted(kind: str) -> Starlette:
    """A test double of an upstream that is not to be trusted: `line` streams one
    event line of 3 MiB, `error` answers 500 with 8 MiB of body, `index` streams a
    choice index out of range, `usage` a token count that cannot be, `abort` ends the
    answer with vLLM's finish_reason "abort" (its engine gave the generation up)."""

    async def answer(request: Request) -> Response:
        chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "up-model"}
        if kind == "line":
            return Response(b"data: " + b"x" * (3 * 2**20), media_type="text/event-stream")
        if kind == "error":
            return Response(b"e" * (8 * 2**20), status_code=500)
        if kind == "index":
            choices = [{"index": 5, "delta": {"content": "hi"}, "finish_reason": None}]
            events = [{**chunk, "choices": choices}]
        elif kind == "abort":
            choices = [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "abort"}]
            events = [{**chunk, "choices": choices}]
        else:
            choices = [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]
            usage = {"prompt_tokens": -3, "completion_tokens": "many", "total_tokens": 1}
            events = [{**chunk, "choices": choices}, {**chunk, "choices": [], "usage": usage}]
        frames = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)
        return Response(frames + b"data: [DONE]\n\n", media_type="text/event-stream")

    async def health(request: Request) -> Response:
        return Response()

    routes = [Route("/v1/chat/completions", answer, methods=["POST"]), Route("/health", health)]
    return Starlette(routes=routes)


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("line", "event line over"),
        ("error", "500"),
        ("index", "choice index 5"),
        ("usage", "cannot be"),
        ("abort", "aborted the generation"),
    ],
)
async def test_an_untrusted_upstream_is_unavailable_never_a_crash(kind: str, said: str) -> None:
    with serve(untrusted(kind)) as url:
        async with remote(url) as engine:
            with pytest.raises(EngineUnavailable, match=said) as info:
                await collect(engine, GenerationRequest("r", CHAT))
            assert len(info.value.message) < 2000  # bounded, whatever it was sent


def test_text_that_arrives_together_is_joined_and_nothing_else_is() -> None:
    ids = (1,)
    first = Chunk(0, "", 0, 0, prompt_token_ids=(7, 8))  # the role chunk: the prompt's ids
    a, b = Chunk(0, "Hel", 1, 0, token_ids=ids), Chunk(0, "lo", 1, 0, token_ids=(2,))
    other = Chunk(1, "x", 1, 0)
    end = Chunk(0, "", 1, 0, finish_reason="stop", stop_reason="\n", token_ids=(3,))
    call = Chunk(0, "", 1, 0, tool_calls=(ToolCallDelta(0, "c", "f", "{}"),))
    joined = coalesced([first, a, b, end, call])
    assert joined == [
        first,
        Chunk(0, "Hello", 3, 0, finish_reason="stop", stop_reason="\n", token_ids=(1, 2, 3)),
        call,
    ]
    assert coalesced([a, other, b]) == [a, other, b]  # another choice in between
    assert coalesced([end, a]) == [end, a]  # nothing joins a choice's end
