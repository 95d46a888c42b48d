"""Streams that survive their replica: two real `vllm serve` replicas of the demo model
behind the gateway; the replica serving a stream is killed (`kill -9`) after k chunks
of text, or stopped as a rolling update stops it (SIGTERM), and the stream goes on
on the other one (gateway/resume.py).

Greedy and seeded, chat and completions, the base model and an adapter, n = 2: the
text the client gets is byte-identical to an uninterrupted run of the same request,
with the same usage and one finish per choice (the replicas run in float32: see
`replicas`). A json_schema answer cut mid-way ends
with an explicit error event, and with both replicas down the stream ends with an
error within the resume deadline."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.app import create_app
from gateway.settings import Settings
from tests.e2e.conftest import ADAPTERS
from tests.replicas import MODEL, Replica, remote_engines, started_replicas
from tests.servers import resumes, serve, wait_until
from tests.settings import NO_AUTH

PROBE = {"probe_interval_s": 0.5, "probe_timeout_s": 1.0, "unhealthy_after": 2, "ejection_s": 2}
# Both upstream timeouts are longer than the resume deadline: what gives up on a frozen
# replica's continuation must be the deadline, which the error then names.
TIMEOUTS = {"connect_timeout_s": 2, "first_token_timeout_s": 20, "idle_timeout_s": 20}
DEADLINE_S = 8.0
CUT_AFTER = 6  # chunks of text before the kill: mid-answer for max_tokens 40

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def replicas(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    """In float32: in the model's bf16, a prefill of the relayed tokens and the decode
    steps that made them give logits ~0.1 apart on this model (vLLM's CPU kernels), so
    a seeded sample drifts a few tokens after the break (greedy held); in float32 a
    resumed answer is the uninterrupted one, token for token (docs/benchmarks/resume.md)."""
    logs = tmp_path_factory.mktemp("resume-replicas")
    with started_replicas(demo_model, logs, dtype="float32") as started:
        yield started


@pytest.fixture(scope="module")
def gateway(
    replicas: list[Replica], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Any]]:
    root = tmp_path_factory.mktemp("resume-adapters")
    shutil.copytree(ADAPTERS / "shout", root / "shout")
    engines = remote_engines([(r.name, r.url) for r in replicas], root, TIMEOUTS)
    balancer = {"policy": "round_robin", "resume_deadline_s": DEADLINE_S, **PROBE}
    settings = Settings(engines=engines, balancer=balancer, auth=NO_AUTH, cache={"mode": "off"})
    app = create_app(settings)
    with serve(app) as url:
        assert wait_until(lambda: app.state.shared.catalog.ready, timeout=30)
        r = httpx.post(url + "/v1/adapters", json={"name": "shout", "path": "shout"}, timeout=60)
        assert r.status_code == 200, r.text
        yield url, app


@pytest.fixture
def both_up(replicas: list[Replica], gateway: tuple[str, Any]) -> Iterator[dict[str, Replica]]:
    """Both replicas serving, with the adapter, before the test; a replica the test
    killed is started again after it."""
    _, app = gateway
    backends = app.state.shared.catalog.models[0].pool.backends
    for replica in replicas:
        if not replica.alive:
            replica.start()
    for replica in replicas:
        replica.wait_ready()
    assert wait_until(lambda: all(b.routable(time.monotonic()) for b in backends), timeout=30)
    yield {r.name: r for r in replicas}
    for replica in replicas:
        with contextlib.suppress(ProcessLookupError):
            replica.signal(signal.SIGCONT)
        if not replica.alive:
            replica.start()


@dataclass
class Stream:
    """One streamed answer as the client saw it."""

    backend: str = ""
    ids: set[str] = field(default_factory=set)
    texts: dict[int, str] = field(default_factory=dict)
    finishes: list[tuple[int, str]] = field(default_factory=list)
    usage: dict[str, int] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0


def stream(
    url: str, path: str, body: dict[str, Any], on_text: Callable[[int, str], None] | None = None
) -> Stream:
    """POST a streamed request and read it to the end; `on_text(k, backend)` after the
    k-th chunk with text."""
    seen = Stream()
    chunks = 0
    started = time.monotonic()
    payload = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url + path, json=payload, timeout=120) as r:
        assert r.status_code == 200, r.read()
        seen.backend = r.headers["x-switchyard-backend"]
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = orjson.loads(line[6:])
            if "error" in event:
                seen.errors.append(event["error"])
                continue
            seen.ids.add(event["id"])
            if event.get("usage"):
                seen.usage = event["usage"]
            for choice in event["choices"]:
                piece = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                if piece:
                    seen.texts[choice["index"]] = seen.texts.get(choice["index"], "") + piece
                    chunks += 1
                    if on_text is not None:
                        on_text(chunks, seen.backend)
                if choice.get("finish_reason"):
                    seen.finishes.append((choice["index"], choice["finish_reason"]))
    seen.elapsed_s = time.monotonic() - started
    return seen


def killer(replicas: dict[str, Replica], after: int) -> Callable[[int, str], None]:
    def on_text(chunks: int, backend: str) -> None:
        if chunks == after:
            replicas[backend].kill()

    return on_text


CASES = {
    "chat-greedy-base": ("/v1/chat/completions", MODEL, {"temperature": 0}),
    "completions-greedy-adapter": ("/v1/completions", "shout", {"temperature": 0}),
    "chat-seeded-adapter": ("/v1/chat/completions", "shout", {"temperature": 0.9, "seed": 7}),
    "completions-seeded-n2": ("/v1/completions", MODEL, {"temperature": 0.9, "seed": 11, "n": 2}),
}


def request(path: str, model: str, sampling: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": 40, **sampling}
    if path.endswith("chat/completions"):
        body["messages"] = [{"role": "user", "content": "Tell me about the sea in a few lines."}]
    else:
        body["prompt"] = "A short story about a lighthouse keeper:"
    return body


@pytest.mark.parametrize("case", CASES)
def test_a_stream_whose_replica_is_killed_goes_on_identically_on_the_other(
    case: str, both_up: dict[str, Replica], gateway: tuple[str, Any]
) -> None:
    url, _ = gateway
    path, model, sampling = CASES[case]
    body = request(path, model, sampling)
    reference = stream(url, path, body)
    assert not reference.errors
    assert sum(len(t) for t in reference.texts.values()) > 40

    cut = stream(url, path, body, killer(both_up, CUT_AFTER))

    assert not both_up[cut.backend].alive  # the replica serving it was killed mid-answer
    assert cut.errors == []
    assert cut.texts == reference.texts  # byte-identical, every choice
    assert sorted(cut.finishes) == sorted(reference.finishes)  # one finish per choice
    assert len(cut.ids) == 1
    assert cut.usage == reference.usage


def test_a_stream_whose_replica_shuts_down_goes_on_identically_on_the_other(
    both_up: dict[str, Replica], gateway: tuple[str, Any]
) -> None:
    """SIGTERM to the API server alone, as `docker stop` and Kubernetes send it. vLLM
    0.32 (shutdown_timeout 0) then stops generating, and mostly holds the stream open
    until its client leaves: the gateway's idle timeout (20 s here, 60 s by default)
    gives it up, and the answer goes on on the other replica."""
    url, _ = gateway
    path, model, sampling = CASES["chat-greedy-base"]
    body = request(path, model, sampling)
    reference = stream(url, path, body)

    def stop(chunks: int, backend: str) -> None:
        if chunks == CUT_AFTER:
            process = both_up[backend].proc
            assert process is not None
            process.send_signal(signal.SIGTERM)

    before = resumes(url)["resumed"]
    cut = stream(url, path, body, stop)

    process = both_up[cut.backend].proc
    assert process is not None
    assert process.wait(timeout=60) is not None  # it did shut down
    assert resumes(url)["resumed"] == before + 1  # and it went on on the other replica
    assert cut.errors == []
    assert cut.texts == reference.texts
    assert cut.finishes == reference.finishes == [(0, "length")]
    assert cut.usage == reference.usage


def test_a_json_schema_answer_cut_mid_way_ends_with_an_explicit_error(
    both_up: dict[str, Replica], gateway: tuple[str, Any]
) -> None:
    url, _ = gateway
    facts = {"type": "array", "items": {"type": "string"}}
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "facts": facts},
        "required": ["city", "facts"],
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "city", "schema": schema}}
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Describe Paris as JSON with many facts."}],
        "max_tokens": 60,
        "temperature": 0,
        "response_format": response_format,
    }
    cut = stream(url, "/v1/chat/completions", body, killer(both_up, CUT_AFTER))

    if cut.errors:  # refused: the answer was cut and says why; no finish follows
        (error,) = cut.errors
        assert "cut" in error["message"]
        assert "constrains decoding" in error["message"]
        assert cut.finishes == []
    else:  # completed: valid JSON of the schema
        answer = json.loads(cut.texts[0])
        assert isinstance(answer["city"], str)
        assert isinstance(answer["facts"], list)


def test_with_both_replicas_down_the_stream_ends_with_an_error_within_the_deadline(
    both_up: dict[str, Replica], gateway: tuple[str, Any]
) -> None:
    url, _ = gateway
    body = request("/v1/completions", MODEL, {"temperature": 0})

    def take_both_down(chunks: int, backend: str) -> None:
        if chunks == CUT_AFTER:
            for name, replica in both_up.items():
                if name != backend:
                    replica.signal(signal.SIGSTOP)  # up, but answering nothing
            both_up[backend].kill()

    cut = stream(url, "/v1/completions", body, take_both_down)
    (error,) = cut.errors
    assert "cut" in error["message"]
    # The frozen replica's continuation was given up by the resume deadline (8 s), the
    # one timer that says "sent nothing within resume_deadline_s"; its own first-token
    # and idle timeouts (20 s) or the client's (120 s) would say theirs.
    assert f"sent nothing within resume_deadline_s={DEADLINE_S}" in error["message"], error
    assert cut.finishes == []
