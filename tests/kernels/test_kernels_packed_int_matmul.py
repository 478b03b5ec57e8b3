"""GPTQ / AWQ dequantize-matmul kernel (Triton interpreter) against the torch dequantization."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from ferrite_server.kernels.packed_int_matmul import PackedMatmulTiles, packed_int_matmul
from ferrite_server.layers.quantization.int_packing import AWQ_ORDER, pack_int32
from ferrite_server.layers.quantization.packed_linear import (
    PackedIntWeights,
    awq_as_gptq_layout,
    dequantize_packed,
    packed_int_linear,
    sequential_group_size_of,
)

# Small tiles so that every test crosses tile edges in M, N and K.
TILES = PackedMatmulTiles(block_m=16, block_n=32, block_k=32)


def _weights(
    layout: str, bits: int, in_features: int, out_features: int, group_size: int, act_order: bool
) -> PackedIntWeights:
    generator = torch.Generator().manual_seed(in_features + out_features + bits)
    max_code = (1 << bits) - 1
    num_groups = in_features // group_size
    q = torch.randint(0, max_code + 1, (in_features, out_features), generator=generator)
    zeros = torch.randint(0, max_code + 1, (num_groups, out_features), generator=generator)
    scales = (torch.rand(num_groups, out_features, generator=generator) * 0.05 + 0.01).half()
    g_idx = torch.arange(in_features) // group_size
    if act_order:
        g_idx = g_idx[torch.randperm(in_features, generator=generator)]
    if layout == "awq":
        return PackedIntWeights(
            pack_int32(q, 4, 1, AWQ_ORDER),
            pack_int32(zeros, 4, 1, AWQ_ORDER),
            scales,
            g_idx.to(torch.int32),
            4,
            "awq",
        )
    # GPTQ's original format: zero - 1 stored, wrapping 0 to the top code (read back + 1).
    stored_zeros = (zeros - 1) & max_code
    return PackedIntWeights(
        pack_int32(q, bits, 0),
        pack_int32(stored_zeros, bits, 1),
        scales,
        g_idx.to(torch.int32),
        bits,
        "gptq",
        zero_offset=1,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    ("layout", "bits", "act_order"),
    [("gptq", 4, True), ("gptq", 4, False), ("gptq", 8, True), ("awq", 4, False)],
)
@pytest.mark.parametrize("num_rows", [1, 5, 37])
def test_kernel_matches_dequantized_matmul(
    dtype: torch.dtype, layout: str, bits: int, act_order: bool, num_rows: int
) -> None:
    weights = _weights(
        layout, bits, in_features=96, out_features=80, group_size=16, act_order=act_order
    )
    x = torch.randn(num_rows, 96, generator=torch.Generator().manual_seed(num_rows)).to(dtype)
    reference = x.float() @ dequantize_packed(weights, torch.float32).t()
    out = packed_int_matmul(x, weights, TILES)
    assert out.dtype == dtype and out.shape == (num_rows, 80)
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2 * reference.abs().max().item() / 10
    assert (out.float() - reference).abs().max().item() < max(tolerance, 1e-4)


@pytest.mark.parametrize(
    ("layout", "act_order", "split_k"),
    [("gptq", False, 1), ("gptq", False, 3), ("awq", False, 2), ("gptq", True, 2)],
)
def test_split_k_and_computed_groups_match_dequantized_matmul(
    layout: str, act_order: bool, split_k: int
) -> None:
    """K split over programs (partial sums added after), and groups computed from k instead of
    gathered through g_idx where there is no act-order (group 32 = block_k)."""
    weights = _weights(layout, 4, in_features=160, out_features=64, group_size=32, act_order=act_order)
    weights = replace(
        weights, sequential_group_size=sequential_group_size_of(weights.g_idx, 32)
    )
    assert (weights.sequential_group_size is None) == act_order
    x = torch.randn(3, 160, generator=torch.Generator().manual_seed(split_k))
    reference = x @ dequantize_packed(weights, torch.float32).t()
    out = packed_int_matmul(x, weights, replace(TILES, split_k=split_k))
    assert (out - reference).abs().max().item() < 1e-4


def test_awq_repacked_in_gptq_layout_is_the_same_matrix() -> None:
    awq = _weights("awq", 4, in_features=64, out_features=48, group_size=16, act_order=False)
    repacked = awq_as_gptq_layout(awq)
    assert repacked.layout == "gptq" and repacked.qweight.shape == (8, 48)
    assert torch.equal(dequantize_packed(repacked, torch.float32), dequantize_packed(awq, torch.float32))
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(2))
    reference = x @ dequantize_packed(awq, torch.float32).t()
    assert (packed_int_matmul(x, repacked, TILES) - reference).abs().max().item() < 1e-4


def test_dequantization_reads_gptq_zeros_plus_one_and_awq_slot_order() -> None:
    """One hand-built word per layout, so the convention itself (not just self-consistency) is
    pinned down: GPTQ packs K sequentially and stores zero - 1; AWQ interleaves N."""
    codes = torch.arange(8)  # q values 0..7 along K, the same for all 8 output columns
    gptq = PackedIntWeights(
        qweight=pack_int32(codes.view(8, 1).expand(8, 8), 4, 0),  # [1, 8]
        qzeros=torch.tensor([[0x00000002]], dtype=torch.int32),  # column 0 stores 2, others 0
        scales=torch.ones(1, 8, dtype=torch.float16),
        g_idx=torch.zeros(8, dtype=torch.int32),
        bits=4,
        layout="gptq",
        zero_offset=1,
    )
    assert gptq.qweight[0, 0].item() == 0x76543210
    dequantized = dequantize_packed(gptq, torch.float32)  # [N 8, K 8]
    assert dequantized[0].tolist() == [c - 3 for c in range(8)]  # zero 2 + 1
    assert dequantized[1].tolist() == [c - 1 for c in range(8)]  # zero 0 + 1
    awq_word = 0x75316420  # slots hold columns 0, 2, 4, 6, 1, 3, 5, 7
    awq = PackedIntWeights(
        qweight=torch.tensor([[awq_word]], dtype=torch.int32),
        qzeros=torch.zeros(1, 1, dtype=torch.int32),
        scales=torch.ones(1, 8, dtype=torch.float16),
        g_idx=torch.zeros(1, dtype=torch.int32),
        bits=4,
        layout="awq",
    )
    assert dequantize_packed(awq, torch.float32).reshape(-1).tolist() == list(range(8))


def test_linear_dispatch_uses_the_kernel_for_few_rows_only() -> None:
    weights = _weights("gptq", 4, 64, 32, 16, act_order=True)
    x = torch.randn(3, 64)
    reference = x @ dequantize_packed(weights, torch.float32).t()
    assert torch.allclose(packed_int_linear(x, weights, use_kernel=True), reference, atol=1e-4)
    assert torch.allclose(packed_int_linear(x, weights, use_kernel=False), reference, atol=1e-4)
