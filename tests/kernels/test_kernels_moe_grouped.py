"""The grouped expert matmul (kernels/moe_grouped_matmul.py, interpreter) against the torch
path of layers/moe.py (itself checked against transformers' Mixtral in the engine and launcher
tests): the same SparseMoE layer, float and `--quantize fp8` experts, both ways.

Shapes that make the kernel's edges matter: hidden / intermediate sizes that are not multiples
of the tiles, an expert no token picks (an empty run), experts whose run spans several tiles,
and one token (decode).
"""

from __future__ import annotations

import pytest
import torch

from ferrite_server.engine.errors import UnsupportedModelError
from ferrite_server.kernels.moe_grouped_matmul import ExpertAlignment
from ferrite_server.layers.moe import MoEConfig, SparseMoE
from ferrite_server.layers.placement import LayerPlacement
from ferrite_server.layers.quantization.config import resolve_quantization
from ferrite_server.layers.quantization.fp8_ops import FP8_DTYPE

HIDDEN_SIZE = 40
MOE = MoEConfig(num_experts=5, top_k=2, intermediate_size=72)


def _moe_layer(dtype: torch.dtype, seed: int, fp8: bool = False) -> SparseMoE:
    quantization = resolve_quantization("fp8", {}) if fp8 else None
    placement = LayerPlacement(dtype, torch.device("cpu"), quantization=quantization)
    layer = SparseMoE(HIDDEN_SIZE, MOE, "silu", placement)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in layer.parameters():
            noise = torch.randn(parameter.shape, generator=generator) / HIDDEN_SIZE**0.5
            parameter.copy_(noise.to(dtype))
        # The router never picks expert 4: its run is empty.
        layer.gate.weight[4] = -100.0
    layer.process_weights_after_loading()
    return layer


def _both_paths(layer: SparseMoE, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    layer.use_grouped_kernel = False
    looped = layer(hidden)
    layer.use_grouped_kernel = True
    grouped = layer(hidden)
    return looped, grouped


def test_alignment_groups_every_pair_by_expert_in_whole_tiles() -> None:
    experts = torch.tensor([[3, 0], [0, 1], [3, 1], [0, 3], [1, 0]])  # [T=5, k=2]
    alignment = ExpertAlignment.of(experts, num_experts=5, block_m=4)
    rows = alignment.sorted_rows.tolist()
    assert alignment.num_rows == 10
    assert sorted(r for r in rows if r < 10) == list(range(10))  # every pair exactly once
    flat = experts.flatten().tolist()
    for tile, expert in enumerate(alignment.tile_experts.tolist()):
        tile_rows = [r for r in rows[tile * 4 : (tile + 1) * 4] if r < 10]
        assert all(flat[r] == expert for r in tile_rows), (tile, tile_rows)
        # Real rows come first in a tile (the kernel skips a tile whose first row is padding).
        assert tile_rows == rows[tile * 4 : tile * 4 + len(tile_rows)]
    # Expert 0 has four pairs (one tile), 1 three, 3 three (one padded tile each), 2 and 4 none.
    real_tiles = [e for t, e in enumerate(alignment.tile_experts.tolist()) if rows[t * 4] < 10]
    assert real_tiles == [0, 1, 3]


@pytest.mark.parametrize("num_tokens", [1, 7, 37])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_grouped_kernel_matches_the_torch_path(num_tokens: int, dtype: torch.dtype) -> None:
    layer = _moe_layer(dtype, seed=num_tokens)
    hidden = torch.randn(num_tokens, HIDDEN_SIZE, generator=torch.Generator().manual_seed(1))
    looped, grouped = _both_paths(layer, hidden.to(dtype))
    assert grouped.dtype == dtype and grouped.shape == (num_tokens, HIDDEN_SIZE)
    tolerance = 2e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(grouped, looped, atol=tolerance, rtol=tolerance)
    assert looped.abs().max() > 0.05  # the comparison is not between near-zero outputs


def test_fp8_experts_match_between_paths_and_stay_close_to_float() -> None:
    float_layer = _moe_layer(torch.float32, seed=3)
    fp8_layer = _moe_layer(torch.float32, seed=3, fp8=True)
    assert fp8_layer.w13.dtype == FP8_DTYPE and fp8_layer.w2.dtype == FP8_DTYPE
    assert fp8_layer.w13_scales is not None and fp8_layer.w13_scales.shape == (5, 144)
    hidden = torch.randn(23, HIDDEN_SIZE, generator=torch.Generator().manual_seed(2))
    looped, grouped = _both_paths(fp8_layer, hidden)
    torch.testing.assert_close(grouped, looped, atol=2e-5, rtol=2e-5)
    float_layer.use_grouped_kernel = False
    exact = float_layer(hidden)
    # e4m3 keeps 3 mantissa bits: every weight within 2^-4 relative, the outputs a few percent.
    error = (looped - exact).abs().max() / exact.abs().max()
    assert 0 < error < 0.1


def test_methods_that_cannot_hold_experts_are_refused() -> None:
    placement = LayerPlacement(
        torch.float32, torch.device("cpu"), quantization=resolve_quantization("bitsandbytes", {})
    )
    with pytest.raises(UnsupportedModelError, match="--quantize fp8"):
        SparseMoE(HIDDEN_SIZE, MOE, "silu", placement)

