"""Linear layers that know how to load (their tensor-parallel slice of) checkpoint weights.

Megatron-style split: a column-parallel layer keeps a slice of the output features (no
communication needed), a row-parallel layer keeps a slice of the input features (its partial
outputs are summed across ranks with one all-reduce). Fused layers (qkv, gate_up) are
column-parallel layers whose output is several checkpoint tensors side by side; their loaders
put each tensor's rank slice at its offset. With world_size 1 every slice is the whole tensor.
Loaders read only their slice of the checkpoint (`takes_slices=True`, see weights.py).

How the weight is stored and multiplied is the layer's quantization method
(layers/quantization/): the layer describes its shape once (`LinearShape`: sizes, fused parts,
which features this rank keeps), the method creates the parameters with loaders that slice by
that shape, and forward() calls the method. Models never branch on quantization.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ferrite_server.layers.head_partition import HeadPartition
from ferrite_server.layers.lora import LoraBatch, LoraLinearWeights
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


@dataclass(frozen=True)
class _LinearParts:
    """The fused parts of one linear layer: full sizes, shard ids, and what this rank keeps."""

    output_sizes: tuple[int, ...]
    part_ids: tuple[ShardId, ...] = (None,)
    # (start, length) of each part's output features on this rank; None: an even split.
    output_slices: tuple[tuple[int, int], ...] | None = None


class _Linear(nn.Module):
    """y = x W^T (+ b); W's storage is up to the quantization method."""

    def __init__(
        self,
        in_features: int,
        parts: _LinearParts,
        split: ParallelSplit,
        bias: bool,
        placement: LayerPlacement,
    ) -> None:
        super().__init__()
        self.placement = placement
        self.shape = LinearShape(
            input_size=in_features,
            output_sizes=parts.output_sizes,
            split=split,
            dtype=placement.dtype,
            device=placement.device,
            tp=placement.tp,
            part_ids=parts.part_ids,
            output_slices=parts.output_slices,
        )
        self.quant_method = linear_method_for(placement.quantization)
        self.quant_method.create_weights(self, self.shape)
        local_output_size = self.shape.local_output_size
        self.bias = (
            sharded_parameter(self.shape, _BIAS_DIMS, (local_output_size,), placement.dtype)
            if bias
            else None
        )
        # LoRA adapters targeting this layer (lora/attach.py); None: none do.
        self.lora: LoraLinearWeights | None = None

    def forward(
        self, x: torch.Tensor, lora: LoraBatch | None = None
    ) -> torch.Tensor:  # [T, in] -> [T, out]
        y = self.quant_method.apply(self, x, self.bias)
        return self._add_lora(y, x, lora)

    def _add_lora(self, y: torch.Tensor, x: torch.Tensor, lora: LoraBatch | None) -> torch.Tensor:
        """y plus each token's adapter delta (`lora`: the step's adapter per token)."""
        if lora is None or self.lora is None:
            return y
        return self.lora.add_to(y, x, lora)


class ColumnParallelLinear(_Linear):
    """Output features split over ranks; the checkpoint tensor is sliced along dim 0."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, placement: LayerPlacement
    ) -> None:
        super().__init__(in_features, _LinearParts((out_features,)), "column", bias, placement)


class RowParallelLinear(_Linear):
    """Input features split over ranks; the bias is kept whole (added once after the sum)."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, placement: LayerPlacement
    ) -> None:
        super().__init__(in_features, _LinearParts((out_features,)), "row", bias, placement)

    def forward(
        self, x: torch.Tensor, lora: LoraBatch | None = None
    ) -> torch.Tensor:  # [T, in / N] -> [T, out]
        if not self.placement.group.is_parallel:
            return super().forward(x, lora)
        partial = self.quant_method.apply(self, x, None)  # this rank's share of the sum
        # The LoRA delta of this rank's input slice is a share of the sum too.
        partial = self._add_lora(partial, x, lora)
        summed = self.placement.group.all_reduce(partial)
        # The bias is whole on every rank: added once, after the sum.
        return summed if self.bias is None else summed + self.bias


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
        parts: _LinearParts | None = None,  # default: shard ids 0, 1, ..., even split
    ) -> None:
        if parts is None:
            parts = _LinearParts(output_sizes, tuple(range(len(output_sizes))))
        super().__init__(in_features, parts, "column", bias, placement)

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

    Output layout: [q (num_heads * head_dim) | k (num_kv_heads * head_dim) | v (same as k)],
    with this rank's heads only (`HeadPartition`: KV heads replicated when fewer than ranks).
    """

    def __init__(
        self, hidden_size: int, heads: AttentionHeads, bias: bool, placement: LayerPlacement
    ) -> None:
        partition = HeadPartition.of(heads.num_heads, heads.num_kv_heads, placement.tp)
        head_dim = heads.head_dim
        q_size, kv_size = heads.num_heads * head_dim, heads.num_kv_heads * head_dim
        local_q_size = partition.num_heads * head_dim
        kv_slice = (partition.kv_head_start * head_dim, partition.num_kv_heads * head_dim)
        parts = _LinearParts(
            output_sizes=(q_size, kv_size, kv_size),
            part_ids=("q", "k", "v"),
            output_slices=((placement.tp.rank * local_q_size, local_q_size), kv_slice, kv_slice),
        )
        super().__init__(hidden_size, parts.output_sizes, bias, placement, parts)
        self.heads = heads
        self.partition = partition


def process_weights_after_loading(model: nn.Module) -> None:
    """Let every linear layer's method finish its weights (quantize, rescale) once loaded, and
    every other layer that owns quantizable weights (mixture-of-experts experts) do the same."""
    for module in model.modules():
        if isinstance(module, _Linear):
            module.quant_method.process_weights_after_loading(module)
        elif callable(getattr(module, "process_weights_after_loading", None)):
            module.process_weights_after_loading()
