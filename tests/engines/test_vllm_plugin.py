"""The CPU LoRA fix: rows without an adapter (index -1) get no LoRA term."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from vllm.lora.ops.torch_ops import lora_ops

from engines.vllm_plugin import skip_unadapted


def vllm_op(op: Callable[..., Any]) -> Callable[..., Any]:
    """vLLM's own op, even if an engine in this process already loaded the plugin."""
    return getattr(op, "__wrapped__", op)


def test_index_minus_one_is_not_the_last_slot() -> None:
    weights = torch.stack([torch.zeros(3, 2), torch.ones(3, 2)])  # slot 1 = "last adapter"
    inputs = torch.ones(2, 2)
    indices = torch.tensor([-1, 1])
    broken = torch.zeros(2, 3)
    vllm_op(lora_ops.bgmv_expand)(inputs, weights, broken, indices)
    fixed = torch.zeros(2, 3)
    skip_unadapted(vllm_op(lora_ops.bgmv_expand))(inputs, weights, fixed, indices)
    assert broken[0].tolist() == [2.0, 2.0, 2.0]  # vLLM's op applied slot 1 to a base row
    assert fixed[0].tolist() == [0.0, 0.0, 0.0]
    assert fixed[1].tolist() == [2.0, 2.0, 2.0]


def test_shrink_leaves_unadapted_rows_at_zero() -> None:
    weights = torch.stack([torch.ones(2, 4), torch.full((2, 4), 3.0)])
    out = torch.full((3, 2), 7.0)
    skip_unadapted(vllm_op(lora_ops.bgmv_shrink))(
        torch.ones(3, 4), weights, out, torch.tensor([0, -1, 1])
    )
    assert out.tolist() == [[4.0, 4.0], [0.0, 0.0], [12.0, 12.0]]
