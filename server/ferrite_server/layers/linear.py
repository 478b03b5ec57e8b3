"""Linear layers that know how to load (their tensor-parallel slice of) checkpoint weights.

Megatron-style split: a column-parallel layer keeps a slice of the output features (no
communication needed), a row-parallel layer keeps a slice of the input features (its partial
outputs are summed across ranks with one all-reduce). Fused layers (qkv, gate_up) are
column-parallel layers whose output is several checkpoint tensors side by side; their loaders
put each tensor's rank slice at its offset. With world_size 1 every slice is the whole tensor. Loaders read only their slice
of the checkpoint (`takes_slices=True`, see weights.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ferrite_server.layers.head_partition import HeadPartition
from ferrite_server.layers.placement import LayerPlacement
from ferrite_server.checkpoint_slice import narrow_loaded
from ferrite_server.weights import (
    CheckpointError,
    ShardId,
    attach_weight_loader,
    copy_checked,
)


class _Linear(nn.Module):
    """y = x W^T (+ b) with W [out_features_local, in_features_local]."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, placement: LayerPlacement
    ) -> None:
        super().__init__()
        self.placement = placement
        self.weight = placement.empty_parameter(out_features, in_features)
        self.bias = placement.empty_parameter(out_features) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, in] -> [T, out]
        return F.linear(x, self.weight, self.bias)


class ColumnParallelLinear(_Linear):
    """Output features split over ranks; the checkpoint tensor is sliced along dim 0."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, placement: LayerPlacement
    ) -> None:
        super().__init__(in_features, out_features // placement.tp.world_size, bias, placement)
        attach_weight_loader(self.weight, self._load, takes_slices=True)
        if self.bias is not None:
            attach_weight_loader(self.bias, self._load, takes_slices=True)

    def _load(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: ShardId) -> None:
        if shard_id is not None:
            raise CheckpointError("column-parallel parameter is not fused")
        copy_checked(param.data, self.placement.tp.shard(loaded, 0), "column-parallel")


class RowParallelLinear(_Linear):
    """Input features split over ranks; the bias is kept whole (added once after the sum)."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, placement: LayerPlacement
    ) -> None:
        super().__init__(in_features // placement.tp.world_size, out_features, bias, placement)
        attach_weight_loader(self.weight, self._load_weight, takes_slices=True)
        if self.bias is not None:
            attach_weight_loader(self.bias, self._load_bias, takes_slices=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, in / N] -> [T, out]
        if not self.placement.group.is_parallel:
            return super().forward(x)
        partial = F.linear(x, self.weight)  # this rank's share of the sum over inputs
        summed = self.placement.group.all_reduce(partial)
        # The bias is whole on every rank: added once, after the sum.
        return summed if self.bias is None else summed + self.bias

    def _load_weight(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: ShardId) -> None:
        if shard_id is not None:
            raise CheckpointError("row-parallel parameter is not fused")
        copy_checked(param.data, self.placement.tp.shard(loaded, 1), "row-parallel")

    def _load_bias(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: ShardId) -> None:
        copy_checked(param.data, loaded, "row-parallel bias")


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
        local_sizes: tuple[int, ...] | None = None,  # default: each output split evenly
    ) -> None:
        if local_sizes is None:
            local_sizes = tuple(size // placement.tp.world_size for size in output_sizes)
        super().__init__(in_features, sum(local_sizes), bias, placement)
        self.local_sizes = local_sizes
        attach_weight_loader(self.weight, self._load, takes_slices=True)
        if self.bias is not None:
            attach_weight_loader(self.bias, self._load, takes_slices=True)

    def _load(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: ShardId) -> None:
        if not isinstance(shard_id, int) or not 0 <= shard_id < len(self.local_sizes):
            raise CheckpointError(f"fused parameter needs a shard index, got {shard_id!r}")
        offset = sum(self.local_sizes[:shard_id])
        target = param.data.narrow(0, offset, self.local_sizes[shard_id])
        copy_checked(target, self.placement.tp.shard(loaded, 0), f"fused output {shard_id}")


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

    _SHARD_INDEX = {"q": 0, "k": 1, "v": 2}

    def __init__(
        self, hidden_size: int, heads: AttentionHeads, bias: bool, placement: LayerPlacement
    ) -> None:
        partition = HeadPartition.of(heads.num_heads, heads.num_kv_heads, placement.tp)
        q_size = heads.num_heads * heads.head_dim
        kv_size = heads.num_kv_heads * heads.head_dim
        local_kv_size = partition.num_kv_heads * heads.head_dim
        local_sizes = (partition.num_heads * heads.head_dim, local_kv_size, local_kv_size)
        super().__init__(hidden_size, (q_size, kv_size, kv_size), bias, placement, local_sizes)
        self.heads = heads
        self.partition = partition

    def _load(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: ShardId) -> None:
        if shard_id not in self._SHARD_INDEX:
            raise CheckpointError(f"qkv parameter needs shard id q, k or v, got {shard_id!r}")
        if shard_id == "q":
            super()._load(param, loaded, 0)
            return
        # k / v: this rank's KV heads, which may be shared with other ranks (replication).
        head_dim = self.heads.head_dim
        if loaded.shape[0] != self.heads.num_kv_heads * head_dim:
            raise CheckpointError(
                f"qkv {shard_id}: checkpoint has {loaded.shape[0]} rows, "
                f"{self.heads.num_kv_heads} key/value heads of {head_dim} need "
                f"{self.heads.num_kv_heads * head_dim}"
            )
        rows = narrow_loaded(
            loaded,
            0,
            self.partition.kv_head_start * head_dim,
            self.partition.num_kv_heads * head_dim,
        )
        index = self._SHARD_INDEX[str(shard_id)]
        offset = sum(self.local_sizes[:index])
        target = param.data.narrow(0, offset, self.local_sizes[index])
        copy_checked(target, rows, f"qkv {shard_id}")
