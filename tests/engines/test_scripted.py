from __future__ import annotations

import pytest

from engines.errors import ContextLengthExceeded, EngineUnavailable, UnsupportedEndpoint
from engines.scripted import ScriptedConfig, ScriptedEngine
from engines.types import Chunk, GenerationRequest, Message


async def run(engine: ScriptedEngine, **fields: object) -> list[Chunk]:
    request = GenerationRequest(request_id="r", prompt="p", **fields)  # type: ignore[arg-type]
    return [chunk async for chunk in engine.generate(request)]


@pytest.fixture
async def engine() -> ScriptedEngine:
    engine = ScriptedEngine("s", "m", ScriptedConfig(reply="one two three four"))
    await engine.start()
    return engine


async def test_reply_then_stop(engine: ScriptedEngine) -> None:
    chunks = await run(engine, temperature=0)
    assert "".join(c.text for c in chunks) == "one two three four"
    assert [c.finish_reason for c in chunks] == [None, None, None, "stop"]
    assert sum(c.token_count for c in chunks) == 4


async def test_max_tokens_and_stop_strings(engine: ScriptedEngine) -> None:
    chunks = await run(engine, temperature=0, max_tokens=2)
    assert "".join(c.text for c in chunks) == "one two"
    assert chunks[-1].finish_reason == "length"
    chunks = await run(engine, temperature=0, stop=("ree",))
    assert "".join(c.text for c in chunks) == "one two th"
    assert chunks[-1].finish_reason == "stop"


async def test_seeded_sampling_repeats(engine: ScriptedEngine) -> None:
    first = await run(engine, temperature=1.0, seed=3, n=2)
    again = await run(engine, temperature=1.0, seed=3, n=2)
    assert [(c.index, c.text) for c in first] == [(c.index, c.text) for c in again]


async def test_refuses_before_start_and_past_context() -> None:
    engine = ScriptedEngine("s", "m", ScriptedConfig(max_model_len=3))
    with pytest.raises(EngineUnavailable):
        await run(engine)
    await engine.start()
    request = GenerationRequest("r", (Message("user", "a b c d"),))
    with pytest.raises(ContextLengthExceeded) as exc:
        [c async for c in engine.generate(request)]
    assert exc.value.param == "messages"


async def test_an_embedding_model_embeds_and_generates_nothing() -> None:
    engine = ScriptedEngine("s", "m", ScriptedConfig(serves=("embed",), embedding_size=4))
    await engine.start()
    answer = await engine.embed({"input": ["x", "y", "x"]}, None)
    x, y, again = (d["embedding"] for d in answer["data"])
    assert len(x) == 4
    assert x == again != y
    assert abs(sum(v * v for v in x) - 1) < 1e-9
    with pytest.raises(UnsupportedEndpoint, match="'m' does not support the Chat Completions"):
        [c async for c in engine.generate(GenerationRequest("r", (Message("user", "hi"),)))]
    chatty = ScriptedEngine("s", "m", ScriptedConfig())
    await chatty.start()
    with pytest.raises(UnsupportedEndpoint, match="Embeddings API"):
        await chatty.embed({"input": "x"}, None)
    assert (await chatty.tokenize({"prompt": "ab"}, None))["tokens"] == [97, 98]
