"""Cache keys and the in-memory backend."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from engines.types import Chunk, GenerationRequest, Message, TokenLogprob, ToolCallDelta
from gateway.cache.entry import CorruptEntry, Entry
from gateway.cache.keys import FORMAT, Identity, cache_key, deterministic
from gateway.cache.memory import MemoryCache

CHAT = (Message("user", "hi"),)
BASE = Identity("m")


def key(request: GenerationRequest, identity: Identity = BASE, scope: str = "") -> str:
    return cache_key(identity, "chat", [request], scope)


def test_streamed_and_whole_share_a_key_unless_prompt_logprobs_were_asked() -> None:
    """Prompt logprobs come with whole answers only: a streamed answer has none."""
    whole = GenerationRequest("a", CHAT, temperature=0, max_tokens=8, incremental=False)
    assert key(whole) == key(dataclasses.replace(whole, incremental=True))
    asking = dataclasses.replace(whole, options={"prompt_logprobs": 0})
    assert key(asking) != key(dataclasses.replace(asking, incremental=True))


def test_request_id_does_not_matter_everything_else_does() -> None:
    request = GenerationRequest("a", CHAT, temperature=0, max_tokens=8)
    assert key(request) == key(dataclasses.replace(request, request_id="b"))
    assert key(request).startswith(FORMAT + ":")
    for change in (
        {"prompt": (Message("user", "hello"),)},
        {"max_tokens": 9},
        {"stop": ("x",)},
        {"n": 2},
        {"logprobs": 1},
        {"frequency_penalty": 0.5},
    ):
        assert key(dataclasses.replace(request, **change)) != key(request), change
    assert key(request, scope="tenant-b") != key(request)
    assert cache_key(BASE, "completions", [request]) != key(request)


def test_adapter_digest_and_artifact_are_part_of_the_identity() -> None:
    request = GenerationRequest("a", CHAT, temperature=0)
    v1 = Identity("m", adapter="shout", adapter_digest="1" * 64)
    v2 = Identity("m", adapter="shout", adapter_digest="2" * 64)
    assert key(request, v1) != key(request, v2)
    assert key(request, Identity("m", artifact="gptq-1")) != key(request)


def test_greedy_ignores_seed_and_top_p_and_only_deterministic_requests_qualify() -> None:
    greedy = GenerationRequest("a", CHAT, temperature=0)
    assert key(greedy) == key(dataclasses.replace(greedy, seed=3, top_p=0.5))
    assert deterministic([greedy])
    assert deterministic([GenerationRequest("a", CHAT, temperature=0.7, seed=1)])
    assert not deterministic([GenerationRequest("a", CHAT, temperature=0.7)])


async def test_memory_cache_lru_byte_budget_and_ttl() -> None:
    now = [0.0]
    cache = MemoryCache(max_bytes=10, ttl_s=5, clock=lambda: now[0])
    await cache.set("a", b"1234")
    await cache.set("b", b"5678")
    assert await cache.get("a") == b"1234"  # a is now the most recent
    await cache.set("c", b"90ab")  # over 10 bytes: b, the least recent, goes
    assert await cache.get("b") is None
    assert (await cache.get("a"), await cache.get("c")) == (b"1234", b"90ab")
    assert cache.size == 8
    await cache.set("big", b"x" * 11)  # larger than the budget: not stored
    assert await cache.get("big") is None
    assert len(cache) == 2
    now[0] = 5.0
    assert await cache.get("a") is None  # expired
    assert cache.size == 4


def test_entries_round_trip_and_garbage_is_refused() -> None:
    entry = Entry(
        (
            (0, Chunk(0, "Hello", 1, 5, (TokenLogprob("Hello", -0.1, (("Hi", -2.0),)),))),
            (0, Chunk(1, " there", 2, 5, (), "length")),
            (0, Chunk(0, "", 1, 5, (), "tool_calls", (ToolCallDelta(0, "c1", "f", "{}"),), "hm")),
            (0, Chunk(1, "", 0, 5, (), "stop", stop_reason=30, cached_tokens=4)),
            (0, Chunk(0, "", 0, 5, (), "repetition", stop_reason="repetition_detected")),
        )
    )
    assert Entry.decode(entry.encode("k"), "k") == entry
    before_cached_tokens = orjson.dumps(["k", [[0, *orjson.loads(entry.encode("k"))[1][0][1:-1]]]])
    assert Entry.decode(before_cached_tokens, "k").chunks == entry.chunks[:1]
    rows_of_objects = b'["k", [{"a": 1}]]'
    for garbage in (b"{", b'{"a": 1}', b'["k", [[1, 2]]]', b"[[1, 2]]", rows_of_objects,
                    entry.encode("other")):  # fmt: skip
        with pytest.raises(CorruptEntry):
            Entry.decode(garbage, "k")


def test_an_entry_keeps_every_chunk_field_a_replay_shows() -> None:
    """A new Chunk field is either stored in cache entries or named here as one a
    replay does without (token ids: a replay is never resumed), so a cache hit cannot
    silently lose what the engine said (cached_tokens once was)."""
    full = Chunk(
        1, "t", 2, 9, (TokenLogprob("t", -0.5, (("u", -1.0),)),), "stop",
        (ToolCallDelta(0, "c", "f", "{}"),), "r", "s", [None], (5,), (1, 2), 3,
    )  # fmt: skip
    (replayed,) = (c for _, c in Entry.decode(Entry(((0, full),)).encode("k"), "k").chunks)
    differ = {f.name for f in dataclasses.fields(Chunk)
              if getattr(replayed, f.name) != getattr(full, f.name)}  # fmt: skip
    assert differ == {"token_ids", "prompt_token_ids"}
