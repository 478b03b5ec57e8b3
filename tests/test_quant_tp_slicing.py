"""Tensor-parallel slicing of packed and scaled weights, through the real layer loaders.

For rank r of 2, what a layer keeps after loading the full checkpoint tensors must equal packing
(or scaling) the rank's slice of the float weight: column-parallel layers keep output features,
row-parallel ones input features, fused layers each part's slice at its offset.
"""

from __future__ import annotations

import pytest
import torch

from ferrite_server.layers.linear import (
    AttentionHeads,
    ColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from ferrite_server.layers.placement import LayerPlacement
from ferrite_server.layers.quantization.awq import AwqParams
from ferrite_server.layers.quantization.config import QuantizationConfig
from ferrite_server.layers.quantization.fp8 import Fp8Params
from ferrite_server.layers.quantization.gptq import GptqParams
from ferrite_server.layers.quantization.packed_linear import dequantize_packed
from ferrite_server.weights import TensorParallelRank, weight_loader_of
from tests.support.quantized_checkpoints import (
    KnownQuantized,
    act_order_g_idx,
    awq_tensors,
    gptq_tensors,
    rtn_quantize,
)

GROUP_SIZE = 8
WORLD_SIZE = 2
GPTQ = QuantizationConfig("gptq", GptqParams(bits=4, group_size=GROUP_SIZE, desc_act=True), True)
AWQ = QuantizationConfig("awq", AwqParams(group_size=GROUP_SIZE), True)


def _placement(rank: int, quantization: QuantizationConfig) -> LayerPlacement:
    tp = TensorParallelRank(rank, WORLD_SIZE)
    return LayerPlacement(torch.float32, torch.device("cpu"), tp, quantization=quantization)


def _known(out_features: int, in_features: int, act_order: bool, seed: int) -> KnownQuantized:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator)
    if act_order:
        g_idx = act_order_g_idx(in_features, GROUP_SIZE, generator)
    else:
        g_idx = torch.arange(in_features) // GROUP_SIZE
    return rtn_quantize(weight, 4, g_idx, min_zero=1)


def _load(layer: torch.nn.Module, tensors: dict[str, torch.Tensor], shard_id: str | None) -> None:
    params = dict(layer.named_parameters())
    for name, tensor in tensors.items():
        weight_loader_of(params[name])(params[name], tensor, shard_id)


def _slice_known(known: KnownQuantized, rows: slice | None, cols: slice | None) -> KnownQuantized:
    """The known integers of a slice of the float weight: input rows of q, output columns."""
    rows = rows or slice(None)
    cols = cols or slice(None)
    return KnownQuantized(
        known.q[rows, cols], known.zeros[:, cols], known.scales[:, cols], known.g_idx[rows]
    )


@pytest.mark.parametrize("rank", [0, 1])
def test_gptq_column_and_row_slices_equal_packing_the_sliced_weight(rank: int) -> None:
    known = _known(32, 48, act_order=True, seed=rank)
    column = ColumnParallelLinear(48, 32, bias=False, placement=_placement(rank, GPTQ))
    _load(column, gptq_tensors(known, 4), None)
    expected = gptq_tensors(_slice_known(known, None, slice(16 * rank, 16 * rank + 16)), 4)
    for name, tensor in expected.items():
        assert torch.equal(getattr(column, name).data, tensor.to(getattr(column, name).dtype)), name

    row = RowParallelLinear(48, 32, bias=False, placement=_placement(rank, GPTQ))
    _load(row, gptq_tensors(known, 4), None)
    rows = slice(24 * rank, 24 * rank + 24)
    expected = gptq_tensors(_slice_known(known, rows, None), 4)
    for name in ("qweight", "g_idx"):
        assert torch.equal(getattr(row, name).data, expected[name]), name
    # Act-order: any input row may use any group, so every rank keeps all scales and zeros.
    assert torch.equal(row.scales.data, known.scales)
    row.quant_method.process_weights_after_loading(row)
    assert torch.equal(dequantize_packed(row.packed, torch.float32), known.dequantized()[:, rows])


@pytest.mark.parametrize("rank", [0, 1])
def test_awq_column_and_row_slices_equal_packing_the_sliced_weight(rank: int) -> None:
    known = _known(32, 64, act_order=False, seed=10 + rank)
    column = ColumnParallelLinear(64, 32, bias=False, placement=_placement(rank, AWQ))
    _load(column, awq_tensors(known), None)
    expected = awq_tensors(_slice_known(known, None, slice(16 * rank, 16 * rank + 16)))
    for name, tensor in expected.items():
        assert torch.equal(getattr(column, name).data, tensor), name

    row = RowParallelLinear(64, 32, bias=False, placement=_placement(rank, AWQ))
    _load(row, awq_tensors(known), None)
    rows = slice(32 * rank, 32 * rank + 32)
    sliced = _slice_known(known, rows, None)
    groups = slice(4 * rank, 4 * rank + 4)  # consecutive groups: the rank's 32 rows = 4 groups
    sliced = KnownQuantized(
        sliced.q, known.zeros[groups], known.scales[groups], sliced.g_idx - 4 * rank
    )
    for name, tensor in awq_tensors(sliced).items():
        assert torch.equal(getattr(row, name).data, tensor), name
    row.quant_method.process_weights_after_loading(row)
    assert torch.equal(dequantize_packed(row.packed, torch.float32), known.dequantized()[:, rows])


def _load_gptq_qkv(layer: QKVParallelLinear, g_idx: torch.Tensor) -> dict[str, KnownQuantized]:
    """Load 4-bit GPTQ q (32 outputs), k and v (16 each) parts over 48 inputs into the fused
    layer; returns each part's known quantization."""
    parts = {}
    for seed, (shard_id, out_features) in enumerate((("q", 32), ("k", 16), ("v", 16))):
        weight = torch.randn(out_features, 48, generator=torch.Generator().manual_seed(seed))
        parts[shard_id] = rtn_quantize(weight, 4, g_idx, min_zero=1)
        _load(layer, gptq_tensors(parts[shard_id], 4), shard_id)
    layer.quant_method.process_weights_after_loading(layer)
    return parts


@pytest.mark.parametrize("rank", [0, 1])
def test_fused_qkv_puts_each_parts_packed_slice_at_its_offset(rank: int) -> None:
    heads = AttentionHeads(num_heads=4, num_kv_heads=2, head_dim=8)  # q 32, k 16, v 16 outputs
    layer = QKVParallelLinear(48, heads, bias=False, placement=_placement(rank, GPTQ))
    g_idx = act_order_g_idx(48, GROUP_SIZE, torch.Generator().manual_seed(5))
    parts = _load_gptq_qkv(layer, g_idx)
    expected = torch.cat(
        [
            known.dequantized()[out // 2 * rank : out // 2 * (rank + 1)]
            for known, out in ((parts["q"], 32), (parts["k"], 16), (parts["v"], 16))
        ]
    )
    assert torch.equal(dequantize_packed(layer.packed, torch.float32), expected)


def test_fused_parts_with_different_act_orders_are_refused() -> None:
    from ferrite_server.weights import CheckpointError

    layer = QKVParallelLinear(
        48, AttentionHeads(4, 2, 8), bias=False, placement=_placement(0, GPTQ)
    )
    generator = torch.Generator().manual_seed(0)
    for shard_id, out_features in (("q", 32), ("k", 16)):
        g_idx = act_order_g_idx(48, GROUP_SIZE, generator)  # a different order per part
        known = rtn_quantize(torch.randn(out_features, 48, generator=generator), 4, g_idx, 1)
        tensors = gptq_tensors(known, 4)
        if shard_id == "k":
            with pytest.raises(CheckpointError, match="disagree"):
                _load(layer, tensors, shard_id)
        else:
            _load(layer, tensors, shard_id)


@pytest.mark.parametrize("rank", [0, 1])
def test_fp8_block_scales_slice_with_their_blocks(rank: int) -> None:
    fp8 = QuantizationConfig("fp8", Fp8Params(from_checkpoint=True, block_size=(8, 16)), True)
    weight = torch.randn(32, 64).to(torch.float8_e4m3fn)
    scales = torch.rand(4, 4) + 0.5  # [32 / 8, 64 / 16]
    column = ColumnParallelLinear(64, 32, bias=False, placement=_placement(rank, fp8))
    _load(column, {"weight": weight, "weight_scale_inv": scales}, None)
    assert torch.equal(column.weight_scale_inv.data, scales[2 * rank : 2 * rank + 2])
    row = RowParallelLinear(64, 32, bias=False, placement=_placement(rank, fp8))
    _load(row, {"weight": weight, "weight_scale_inv": scales}, None)
    assert torch.equal(row.weight_scale_inv.data, scales[:, 2 * rank : 2 * rank + 2])
    assert torch.equal(row.weight.data.float(), weight[:, 32 * rank : 32 * rank + 32].float())


@pytest.mark.parametrize("rank", [0, 1, 2, 3])
def test_replicated_kv_heads_take_their_heads_packed_slice(rank: int) -> None:
    """4 ranks, 2 KV heads: ranks 0-1 keep KV head 0, ranks 2-3 KV head 1 (HeadPartition)."""
    heads = AttentionHeads(num_heads=4, num_kv_heads=2, head_dim=8)  # q 32, k 16, v 16 outputs
    placement = LayerPlacement(
        torch.float32, torch.device("cpu"), TensorParallelRank(rank, 4), quantization=GPTQ
    )
    layer = QKVParallelLinear(48, heads, bias=False, placement=placement)
    g_idx = act_order_g_idx(48, GROUP_SIZE, torch.Generator().manual_seed(6))
    parts = _load_gptq_qkv(layer, g_idx)
    kv_head = rank // 2
    expected = torch.cat(
        [
            parts["q"].dequantized()[8 * rank : 8 * rank + 8],
            parts["k"].dequantized()[8 * kv_head : 8 * kv_head + 8],
            parts["v"].dequantized()[8 * kv_head : 8 * kv_head + 8],
        ]
    )
    assert torch.equal(dequantize_packed(layer.packed, torch.float32), expected)
