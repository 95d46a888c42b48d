"""Switchyard's CPU LoRA ops: vLLM's results for adapted rows, nothing for rows
without an adapter (index -1), which vLLM's own ops give the last slot's adapter.
The reference below is vLLM 0.32's CPU op as shipped (gather, then einsum)."""

from __future__ import annotations

import pytest
import torch

from engines import vllm_plugin


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "a": torch.randn(3, 1, 4, 16),  # slots x 1 x rank x hidden
        "b": torch.randn(3, 1, 16, 4),  # slots x 1 x out x rank
    }


def test_shrink_and_expand_match_vllm_for_adapted_rows(weights: dict[str, torch.Tensor]) -> None:
    x = torch.randn(5, 16)
    idx = torch.tensor([0, 2, 1, 2, 0])
    ours, theirs = torch.zeros(5, 4), torch.zeros(5, 4)
    vllm_plugin.bgmv_shrink(x, weights["a"], ours, idx, 0.5)
    reference_shrink(x, weights["a"], theirs, idx, 0.5)
    torch.testing.assert_close(ours, theirs)
    y_ours, y_theirs = torch.ones(5, 16), torch.ones(5, 16)
    vllm_plugin.bgmv_expand(ours, weights["b"], y_ours, idx, True)
    reference_expand(theirs, weights["b"], y_theirs, idx, True)
    torch.testing.assert_close(y_ours, y_theirs)
    s_ours, s_theirs = torch.ones(5, 40), torch.ones(5, 40)
    vllm_plugin.bgmv_expand_slice(ours, weights["b"], s_ours, idx, 8, 16, True)
    reference_expand_slice(theirs, weights["b"], s_theirs, idx, 8, 16, True)
    torch.testing.assert_close(s_ours, s_theirs)


@pytest.mark.parametrize("indices", [[1, 1, 1], [-1, -1, -1]])
def test_uniform_batches(weights: dict[str, torch.Tensor], indices: list[int]) -> None:
    x = torch.randn(3, 16)
    idx = torch.tensor(indices)
    ours = torch.full((3, 4), 9.0)
    vllm_plugin.bgmv_shrink(x, weights["a"], ours, idx)
    expected = torch.zeros(3, 4) if indices[0] < 0 else x @ weights["a"][1, 0].T
    torch.testing.assert_close(ours, expected)


def test_rows_without_adapter_get_no_lora_term(weights: dict[str, torch.Tensor]) -> None:
    x = torch.randn(2, 16)
    idx = torch.tensor([-1, 1])
    ours, theirs = torch.full((2, 4), 9.0), torch.full((2, 4), 9.0)
    vllm_plugin.bgmv_shrink(x, weights["a"], ours, idx)
    reference_shrink(x, weights["a"], theirs, idx, 1.0)
    assert ours[0].abs().sum() == 0
    assert theirs[0].abs().sum() > 0  # vLLM's op applied slot 2 (the last) to a base row
    torch.testing.assert_close(ours[1], theirs[1])


# vLLM 0.32's CPU ops, as shipped (the gather-then-einsum form), for comparison.
def _products(inputs: torch.Tensor, weights: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bi, boi -> bo", inputs, weights[idx].squeeze(1))


def reference_shrink(
    x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, idx: torch.Tensor, scaling: float
) -> None:
    products = _products(x, w, idx)
    out[:, : products.shape[1]] = scaling * products


def reference_expand(
    x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, idx: torch.Tensor, add: bool
) -> None:
    products = _products(x, w, idx)
    if add:
        out[:, : products.shape[1]] += products
    else:
        out[:, : products.shape[1]] = products


def reference_expand_slice(
    x: torch.Tensor,
    w: torch.Tensor,
    out: torch.Tensor,
    idx: torch.Tensor,
    offset: int,
    size: int,
    add: bool,
) -> None:
    products = _products(x, w, idx)
    if add:
        out[:, offset : offset + size] += products
    else:
        out[:, offset : offset + size] = products
