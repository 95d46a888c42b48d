"""One real vLLM engine (the CPU build on the demo model) for the whole session,
behind a live gateway on loopback, its response cache on a real redis-server; and,
for the embedding tests, the same model on vLLM's pooling runner, in-process and
behind `vllm serve`."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from openai import OpenAI

from engines.vllm_local import VLLMEngine
from gateway.app import create_app
from gateway.bench.process import answers, embeds, server_process, vllm_server_command
from gateway.settings import AdapterSettings, CacheSettings, EngineSettings, Settings
from tests.redis_server import RedisServer
from tests.servers import free_port, serve, wait_until
from tests.settings import NO_AUTH

MODEL_ID = "smollm2-135m-instruct"
EMBED_ID = "smollm2-135m-embed"  # the same model on vLLM's pooling runner
ADAPTERS = Path(__file__).resolve().parents[2] / "adapters"
TOOL_TEMPLATE = ADAPTERS.parent / "configs" / "chat-templates" / "smollm2-tools.jinja"
Probe = Callable[[str, str], Callable[[], bool]]  # (url, model) -> "does it answer?"


@dataclass
class Gateway:
    url: str
    engine: VLLMEngine
    adapter_root: Path
    redis: RedisServer

    def client(self) -> OpenAI:
        return OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0)

    def lookups(self) -> dict[str, float]:
        """switchyard_cache_lookups_total of the demo model, by result."""
        prefix = f'switchyard_cache_lookups_total{{model="{MODEL_ID}",result="'
        text = httpx.get(self.url + "/metrics").text
        return {
            line[len(prefix) :].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(prefix)
        }


@pytest.fixture(scope="session")
def gateway(
    demo_model: Path, tmp_path_factory: pytest.TempPathFactory, session_redis: RedisServer
) -> Iterator[Gateway]:
    """LoRA on, with fewer GPU slots (max_loras=2) than the adapters tests load."""
    root = tmp_path_factory.mktemp("adapters")
    for name in ("shout", "json"):
        shutil.copytree(ADAPTERS / name, root / name)
    options = {
        "model": str(demo_model),
        "max_model_len": 2048,
        "enforce_eager": True,
        "cpu_kvcache_space_gib": 1,
        "enable_lora": True,
        "max_loras": 2,
        "max_cpu_loras": 6,
        "max_lora_rank": 16,
        "chat_template": str(TOOL_TEMPLATE),
        "tool_parser": "hermes",
        "enable_prompt_tokens_details": True,
    }
    engine = EngineSettings(
        name="local",
        kind="vllm",
        model_id=MODEL_ID,
        options=options,
        adapter_root=root,
        adapters=[AdapterSettings(name=n, path=root / n) for n in ("shout", "json")],
    )
    cache = CacheSettings(backend="redis", redis_url=session_redis.url, retry_after_s=0.2)
    app = create_app(Settings(engines=[engine], cache=cache, auth=NO_AUTH))
    (model,) = app.state.shared.catalog.models
    (backend,) = model.pool.backends
    registry = app.state.shared.catalog.adapters
    with serve(app) as url:
        settled = wait_until(
            lambda: backend.state == "failed" or len(list(registry.records())) == 2,
            timeout=600,
            interval=0.5,
        )
        assert settled, (
            f"after 600 s the engine is {backend.state!r} ({backend.error}) with "
            f"{[r.adapter.name for r in registry.records()]} of shout, json loaded"
        )
        assert backend.state == "ready", backend.error
        assert isinstance(backend.engine, VLLMEngine)
        yield Gateway(url, backend.engine, root, session_redis)


@pytest.fixture(scope="session")
def client(gateway: Gateway) -> OpenAI:
    return gateway.client()


@dataclass
class EngineCalls:
    """What the gateway's vLLM engine was asked, seen at vLLM's own `AsyncLLM`:
    the request ids of the generations it started, and of the requests it aborted."""

    started: list[str] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)


@contextlib.contextmanager
def engine_calls(engine: VLLMEngine) -> Iterator[EngineCalls]:
    """Record every `AsyncLLM.generate` and `AsyncLLM.abort` call while inside (both
    still run). vLLM aborts a request through `abort` when its generator is closed or
    cancelled before the end, and never for one that finished."""
    llm = engine._llm
    calls = EngineCalls()
    generate, abort = llm.generate, llm.abort

    def recording_generate(*args: Any, **kwargs: Any) -> Any:
        request_id = kwargs["request_id"] if "request_id" in kwargs else args[2]
        calls.started.append(request_id)
        return generate(*args, **kwargs)

    async def recording_abort(request_id: str | Iterable[str], internal: bool = False) -> None:
        calls.aborted.extend([request_id] if isinstance(request_id, str) else request_id)
        await abort(request_id, internal=internal)

    with (
        mock.patch.object(llm, "generate", recording_generate),
        mock.patch.object(llm, "abort", recording_abort),
    ):
        yield calls


@dataclass
class VLLMServer:
    """`vllm serve` of the demo model, flags matching the in-process `gateway` engine."""

    url: str
    log: Path


@pytest.fixture(scope="session")
def vllm_server(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    """One `vllm serve` for the session: the same model, LoRA slots, context length,
    chat template and tool parser as the in-process engine."""
    flags = ["--max-model-len", "2048", "--enable-lora", "--max-loras", "2"]
    flags += ["--max-lora-rank", "16", "--max-cpu-loras", "6"]
    flags += ["--chat-template", str(TOOL_TEMPLATE)]
    flags += ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    flags += ["--enable-prompt-tokens-details"]
    log = tmp_path_factory.mktemp("vllm-serve") / "vllm.log"
    with _vllm_serve(demo_model, MODEL_ID, flags, answers, log) as server:
        yield server


@contextlib.contextmanager
def _vllm_serve(
    model: Path, served: str, flags: list[str], probe: Probe, log: Path
) -> Iterator[VLLMServer]:
    """`vllm serve` on a free loopback port until `probe(url, served)` says it answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1"}
    command = vllm_server_command(model, served, port, *flags, "--disable-log-stats")
    with server_process(command, probe(url, served), log, env):
        yield VLLMServer(url, log)


@pytest.fixture(scope="session")
def remote_gateway(vllm_server: VLLMServer) -> Iterator[str]:
    """A gateway whose one engine is `openai_remote` in front of `vllm_server`."""
    with _remote("remote", MODEL_ID, {"url": vllm_server.url}) as url:
        yield url


@contextlib.contextmanager
def _remote(name: str, model_id: str, options: dict[str, Any]) -> Iterator[str]:
    engine = EngineSettings(name=name, kind="openai_remote", model_id=model_id, options=options)
    app = create_app(Settings(engines=[engine], cache=CacheSettings(backend="none"), auth=NO_AUTH))
    (model,) = app.state.shared.catalog.models
    (backend,) = model.pool.backends
    with serve(app) as url:
        assert wait_until(lambda: backend.state == "ready", timeout=60), backend.error
        yield url


# The demo model pooled for embeddings (vLLM's `runner: pooling`; a causal LM is
# converted to an embedding model: last-token pooling, normalized).
EMBED_OPTIONS = {"max_model_len": 2048, "enforce_eager": True, "cpu_kvcache_space_gib": 1}


@pytest.fixture(scope="session")
def embed_gateway(demo_model: Path) -> Iterator[str]:
    """A gateway whose one engine is the in-process vLLM pooling runner."""
    options = {"model": str(demo_model), "runner": "pooling", **EMBED_OPTIONS}
    engine = EngineSettings(name="local-embed", kind="vllm", model_id=EMBED_ID, options=options)
    app = create_app(Settings(engines=[engine], cache=CacheSettings(backend="none"), auth=NO_AUTH))
    (model,) = app.state.shared.catalog.models
    (backend,) = model.pool.backends
    with serve(app) as url:
        started = wait_until(lambda: backend.state != "loading", timeout=600, interval=0.5)
        assert started, "the pooling engine is still loading after 600 s"
        assert backend.state == "ready", backend.error
        yield url


@pytest.fixture(scope="session")
def vllm_embed_server(
    demo_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VLLMServer]:
    """`vllm serve --runner pooling` of the demo model, flags matching `embed_gateway`."""
    flags = ["--max-model-len", "2048", "--runner", "pooling"]
    log = tmp_path_factory.mktemp("vllm-serve-embed") / "vllm.log"
    with _vllm_serve(demo_model, EMBED_ID, flags, embeds, log) as server:
        yield server


@pytest.fixture(scope="session")
def remote_embed_gateway(vllm_embed_server: VLLMServer) -> Iterator[str]:
    """A gateway whose one engine is `openai_remote` in front of `vllm_embed_server`."""
    options = {"url": vllm_embed_server.url, "serves": ["embed"]}
    with _remote("remote-embed", EMBED_ID, options) as url:
        yield url
