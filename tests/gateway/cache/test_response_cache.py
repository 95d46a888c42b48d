"""The response cache through HTTP, in front of the scripted engine (which counts its
generations): hits and misses, Cache-Control, faithful replays either way, only
complete answers stored, single-flight, TTL, adapter versions; the in-memory store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from engines.scripted import ScriptedEngine
from gateway.app import create_app
from gateway.settings import CacheSettings, EngineSettings, Settings
from tests.gateway.conftest import scripted
from tests.gateway.test_adapters import make_adapter
from tests.servers import serve, wait_until
from tests.settings import NO_AUTH

CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


@pytest.fixture
def engine() -> ScriptedEngine:
    return scripted(reply="one two three four five six")


@contextlib.contextmanager
def gateway(engine: ScriptedEngine, **cache: Any) -> Iterator[str]:
    settings = Settings(cache=CacheSettings(**cache), auth=NO_AUTH)
    app = create_app(settings, engines=[engine])
    with serve(app) as url:
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=10)
        yield url


@pytest.fixture
def url(engine: ScriptedEngine) -> Iterator[str]:
    with gateway(engine) as url:
        yield url


def post(url: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    r = httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return r


def events(url: str, body: dict[str, Any], **headers: str) -> tuple[str, list[dict[str, Any]]]:
    """The stream's cache header and its events, parsed, up to [DONE]."""
    with httpx.stream(
        "POST", url + "/v1/chat/completions", json={**body, "stream": True}, headers=headers
    ) as r:
        assert r.status_code == 200
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return r.headers["x-switchyard-cache"], [json.loads(line) for line in lines[:-1]]


def metrics(url: str) -> str:
    return httpx.get(url + "/metrics").text


def without_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in item.items() if k not in ("id", "created")} for item in items]


def test_miss_then_hit(url: str, engine: ScriptedEngine) -> None:
    first, second = post(url, CHAT), post(url, CHAT)
    assert first.headers["x-switchyard-cache"] == "miss"
    assert second.headers["x-switchyard-cache"] == "hit"
    assert engine.generations == 1
    a, b = first.json(), second.json()
    assert a["id"] != b["id"]
    assert without_ids([a]) == without_ids([b])
    assert "x-switchyard-backend" not in second.headers  # no backend answered it
    other = post(url, {**CHAT, "max_tokens": 3})  # another request, another key
    assert other.headers["x-switchyard-cache"] == "miss"


def test_cache_control_no_cache_refreshes_and_no_store_keeps_out(
    url: str, engine: ScriptedEngine
) -> None:
    post(url, CHAT)
    assert post(url, CHAT, **{"Cache-Control": "no-cache"}).headers["x-switchyard-cache"] == "miss"
    assert engine.generations == 2
    stored = {**CHAT, "max_tokens": 4}
    assert post(url, stored, **{"Cache-Control": "no-store"}).headers["x-switchyard-cache"] == (
        "miss"
    )
    assert post(url, stored).headers["x-switchyard-cache"] == "miss"  # was not stored
    both = post(url, CHAT, **{"Cache-Control": "no-cache, no-store"})
    assert both.headers["x-switchyard-cache"] == "bypass"


def test_only_deterministic_requests_by_default(url: str, engine: ScriptedEngine) -> None:
    sampled = {**CHAT, "temperature": 0.8}
    assert post(url, sampled).headers["x-switchyard-cache"] == "bypass"
    assert post(url, sampled).headers["x-switchyard-cache"] == "bypass"
    seeded = {**sampled, "seed": 7}
    post(url, seeded)
    assert post(url, seeded).headers["x-switchyard-cache"] == "hit"
    assert engine.generations == 3


@pytest.mark.parametrize(
    ("cache", "header"),
    [
        ({"mode": "all"}, "hit"),  # sampled answers too: replays of an evaluation
        ({"modes": {"scripted": "off"}}, "bypass"),
        ({"backend": "none"}, "bypass"),
    ],
)
def test_mode_per_model(engine: ScriptedEngine, cache: dict[str, Any], header: str) -> None:
    with gateway(engine, **cache) as url:
        body = {**CHAT, "temperature": 0.8 if "mode" in cache else 0}
        post(url, body)
        assert post(url, body).headers["x-switchyard-cache"] == header


def test_streamed_hit_replays_the_chunk_sequence_with_usage(url: str) -> None:
    body = {**CHAT, "logprobs": True, "top_logprobs": 2, "stream_options": {"include_usage": True}}
    first, recorded = events(url, body)
    second, replayed = events(url, body)
    assert (first, second) == ("miss", "hit")
    assert without_ids(replayed) == without_ids(recorded)
    assert len({e["id"] for e in recorded}) == 1
    assert {e["id"] for e in replayed}.isdisjoint({e["id"] for e in recorded})
    assert replayed[-1]["usage"]["completion_tokens"] == 6


def test_streamed_and_plain_answers_serve_each_other(url: str, engine: ScriptedEngine) -> None:
    _, streamed = events(url, CHAT)
    plain = post(url, CHAT)
    assert plain.headers["x-switchyard-cache"] == "hit"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in streamed)
    assert plain.json()["choices"][0]["message"]["content"] == text
    other = {**CHAT, "n": 2}
    plain = post(url, other)
    header, replayed = events(url, other)
    assert header == "hit"
    for index in (0, 1):
        text = "".join(
            e["choices"][0]["delta"].get("content", "")
            for e in replayed
            if e["choices"] and e["choices"][0]["index"] == index
        )
        assert plain.json()["choices"][index]["message"]["content"] == text
    assert engine.generations == 2


def test_a_failed_generation_is_never_stored() -> None:
    engine = scripted(reply="one two three four", fail_after_tokens=2)
    with gateway(engine) as url:
        for _ in range(2):
            header, items = events(url, CHAT)
            assert header == "miss"
            assert "error" in items[-1]
        r = httpx.post(url + "/v1/chat/completions", json=CHAT)
        assert r.status_code == 500
    assert engine.generations == 2 + 3  # the whole answer: retried up to max_attempts


def test_entries_expire() -> None:
    engine = scripted()
    with gateway(engine, ttl_s=0.3) as url:
        post(url, CHAT)
        assert post(url, CHAT).headers["x-switchyard-cache"] == "hit"
        assert wait_until(lambda: post(url, CHAT).headers["x-switchyard-cache"] == "miss", 3)


async def test_identical_concurrent_requests_generate_once() -> None:
    engine = scripted(reply="one two three four five six", token_delay_s=0.05)
    with gateway(engine) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:

            async def ask(i: int) -> tuple[str, str]:
                if i % 2:
                    async with client.stream(
                        "POST", "/v1/chat/completions", json={**CHAT, "stream": True}
                    ) as r:
                        lines = [line async for line in r.aiter_lines() if '"content"' in line]
                        parts = [json.loads(line[6:])["choices"][0]["delta"] for line in lines]
                        return r.headers["x-switchyard-cache"], "".join(
                            p.get("content", "") for p in parts
                        )
                r = await client.post("/v1/chat/completions", json=CHAT)
                return r.headers["x-switchyard-cache"], r.json()["choices"][0]["message"]["content"]

            answers = await asyncio.gather(*(ask(i) for i in range(20)))
    assert engine.generations == 1
    assert sorted(h for h, _ in answers) == ["hit"] * 19 + ["miss"]
    assert {text for _, text in answers} == {"one two three four five six"}


def test_a_follower_outlives_the_client_that_started_the_generation() -> None:
    engine = scripted(reply="word " * 40, token_delay_s=0.02)
    with gateway(engine) as url:
        done: list[httpx.Response] = []
        with httpx.stream("POST", url + "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
            lines = r.iter_lines()  # held: dropping it would close the connection
            next(lines)
            follower = threading.Thread(target=lambda: done.append(post(url, CHAT)))
            follower.start()
            assert wait_until(lambda: "switchyard_cache_followers 2.0" in metrics(url), 5)
            # the leader leaves here, mid-stream
        follower.join(10)
        assert done[0].headers["x-switchyard-cache"] == "hit"
        assert done[0].json()["choices"][0]["finish_reason"] == "stop"
        assert engine.generations == 1
        assert engine.aborted == 0
        with httpx.stream(
            "POST", url + "/v1/chat/completions", json={**CHAT, "stream": True, "max_tokens": 30}
        ) as r:
            lines = r.iter_lines()
            next(lines)
        assert wait_until(lambda: engine.running == 0, 5)
        assert engine.aborted == 1  # nobody left to follow it: aborted in the engine


def test_an_adapter_reloaded_with_other_weights_misses(tmp_path: Path) -> None:
    make_adapter(tmp_path / "v1")
    make_adapter(tmp_path / "v2")
    config = EngineSettings(name="scripted", kind="scripted", model_id="scripted")
    settings = Settings(
        engines=[config.model_copy(update={"adapter_root": tmp_path})], auth=NO_AUTH
    )
    engine = scripted()
    app = create_app(settings, engines=[engine])
    body = {**CHAT, "model": "a"}
    with serve(app) as url:
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=10)
        httpx.post(url + "/v1/adapters", json={"name": "a", "path": "v1"}).raise_for_status()
        assert post(url, body).headers["x-switchyard-cache"] == "miss"
        assert post(url, body).headers["x-switchyard-cache"] == "hit"
        httpx.post(url + "/v1/adapters", json={"name": "a", "path": "v2"}).raise_for_status()
        assert post(url, body).headers["x-switchyard-cache"] == "miss"
        assert post(url, CHAT).headers["x-switchyard-cache"] == "miss"  # the base: its own key
    assert engine.generations == 3


def test_cache_metrics(url: str) -> None:
    post(url, CHAT)
    post(url, CHAT)
    post(url, {**CHAT, "temperature": 1})
    text = metrics(url)
    for line in (
        'switchyard_cache_lookups_total{model="scripted",result="hit"} 1.0',
        'switchyard_cache_lookups_total{model="scripted",result="miss"} 1.0',
        'switchyard_cache_lookups_total{model="scripted",result="bypass"} 1.0',
        "switchyard_cache_entries 1.0",
    ):
        assert line in text
    assert 'cache="hit"' in text
