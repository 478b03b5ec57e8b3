"""Linear layers that know how to load (their tensor-parallel slice of) checkpoint weights.

Megatron-style split: a column-parallel layer keeps a slice of the output features (no
communication needed), a row-parallel layer keeps a slice of the input features (its partial
outputs are summed across ranks). Fused layers (qkv, gate_up) are column-parallel layers whose
output is several checkpoint tensors side by side; their loaders put each tensor's rank slice at
its offset. With world_size 1 every slice is the whole tensor.

How the weight is stored and multiplied is the layer's quantization method
(layers/quantization/): the layer describes its shape once (`LinearShape`), the method creates
the parameters with loaders that slice by that shape, and forward() calls the method. Models
never branch on quantization.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ferrite_server.layers.placement import LayerPlacement
from ferrite_server.layers.quantization.config import linear_method_for
from ferrite_server.layers.quantization.method import (
    LinearShape,
    ParallelSplit,
    ShardedDims,
    sharded_parameter,
)
from ferrite_server.weights import ShardId

# bias [out]: sliced with the output features of a column-parallel layer, whole otherwise.
_BIAS_DIMS = ShardedDims(output_dim=0)


class _Linear(nn.Module):
    """y = x W^T (+ b); W's storage is up to the quantization method."""

    def __init__(
        self,
        in_features: int,
        output_sizes: tuple[int, ...],
        split: ParallelSplit,
        part_ids: tuple[ShardId, ...],
        bias: bool,
        placement: LayerPlacement,
    ) -> None:
        super().__init__()
        self.placement = placement
        self.shape = LinearShape(
            input_size=in_features,
            output_sizes=output_sizes,
            split=split,
            dtype=placement.dtype,
            device=placement.device,
            tp=placement.tp,
            part_ids=part_ids,
        )
        self.quant_method = linear_method_for(placement.quantization)
        self.quant_method.create_weights(self, self.shape)
        local_output_size = self.shape.local_output_size
        self.bias = (
            sharded_parameter(self.shape, _BIAS_DIMS, (local_output_size,), placement.dtype)
            if bias
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, in] -> [T, out]
        return self.quant_method.apply(self, x, self.bias)


class ColumnParallelLinear(_Linear):
    """Output features split over ranks; the checkpoint tensor is sliced along dim 0."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, placement: LayerPlacement
    ) -> None:
        super().__init__(in_features, (out_features,), "column", (None,), bias, placement)


class RowParallelLinear(_Linear):
    """Input features split over ranks; the bias is kept whole (added once after the sum)."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, placement: LayerPlacement
    ) -> None:
        super().__init__(in_features, (out_features,), "row", (None,), bias, placement)


class MergedColumnParallelLinear(_Linear):
    """Several column-parallel outputs fused into one matmul (e.g. gate and up projections).

    Shard id i loads the checkpoint tensor of output i into rows
    [sum(local sizes of outputs < i), + local size of output i).
    """

    def __init__(
        self,
        in_features: int,
        output_sizes: tuple[int, ...],
        bias: bool,
        placement: LayerPlacement,
        part_ids: tuple[ShardId, ...] | None = None,
    ) -> None:
        ids = part_ids if part_ids is not None else tuple(range(len(output_sizes)))
        super().__init__(in_features, output_sizes, "column", ids, bias, placement)

    @property
    def local_sizes(self) -> tuple[int, ...]:
        return self.shape.local_output_sizes


@dataclass(frozen=True)
class AttentionHeads:
    """Head counts of one attention layer (before tensor-parallel splitting)."""

    num_heads: int
    num_kv_heads: int
    head_dim: int


class QKVParallelLinear(MergedColumnParallelLinear):
    """q, k and v projections in one matmul; loads the checkpoint's q_proj / k_proj / v_proj.

    Output layout: [q (num_heads * head_dim) | k (num_kv_heads * head_dim) | v (same as k)].
    """

    def __init__(
        self, hidden_size: int, heads: AttentionHeads, bias: bool, placement: LayerPlacement
    ) -> None:
        q_size = heads.num_heads * heads.head_dim
        kv_size = heads.num_kv_heads * heads.head_dim
        sizes = (q_size, kv_size, kv_size)
        super().__init__(hidden_size, sizes, bias, placement, part_ids=("q", "k", "v"))


def process_weights_after_loading(model: nn.Module) -> None:
    """Let every linear layer's method finish its weights (quantize, rescale) once loaded."""
    for module in model.modules():
        if isinstance(module, _Linear):
            module.quant_method.process_weights_after_loading(module)
