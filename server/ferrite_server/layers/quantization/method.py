"""The quantization-method interface every linear layer holds, and its sharded weight loading.

A linear layer does not know how its weight is stored. It describes itself once (`LinearShape`:
sizes, fused parts, which side tensor parallelism splits) and asks its method to
1. `create_weights`: register the parameters the checkpoint fills (a float `weight`, or packed
   `qweight` / `qzeros` / `scales` / `g_idx`, or an fp8 `weight` and its scales), each with a
   weight loader that takes this rank's slice of the checkpoint tensor;
2. `process_weights_after_loading`: turn what was loaded into what `apply` reads (quantize a
   float weight on the fly, expand per-tensor scales to per-channel, ...);
3. `apply`: y = x W^T (+ b) for x [T, in_local] -> [T, out_local].

Slicing is described per parameter (`ShardedDims`: which tensor dim runs along the output
features and which along the input features, and how many features one element covers: the
packing factor or the group / block size), so one loader serves every scheme: a column-parallel
layer slices the output dim and puts each fused part at its offset; a row-parallel layer slices
the input dim. A parameter with no output dim in a fused layer (GPTQ's g_idx) is the same for
every part: the loader checks that the parts agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
from torch import nn

from ferrite_server.checkpoint_slice import Loaded, narrow_loaded, read_loaded
from ferrite_server.weights import (
    CheckpointError,
    ShardId,
    TensorParallelRank,
    attach_weight_loader,
    copy_checked,
)

ParallelSplit = Literal["column", "row"]
# Attribute on a shared (part-independent) parameter: the fused parts loaded into it so far.
_LOADED_PARTS_ATTRIBUTE = "loaded_parts"


@dataclass(frozen=True)
class LinearShape:
    """One linear layer as the checkpoint sees it, and what this rank keeps of it."""

    input_size: int  # full input features
    output_sizes: tuple[int, ...]  # full output features of each fused part, in order
    split: ParallelSplit  # column: output features split over ranks; row: input features
    dtype: torch.dtype  # compute dtype of activations (and of unquantized weights)
    device: torch.device
    tp: TensorParallelRank = field(default_factory=TensorParallelRank)
    # Checkpoint shard ids of the fused parts, in order ((None,) for an unfused layer).
    part_ids: tuple[ShardId, ...] = (None,)
    # Column-parallel: (start, length) of each part's output features this rank keeps.
    # None: rank r keeps the r-th equal slice (KV heads replicated over ranks need their own).
    output_slices: tuple[tuple[int, int], ...] | None = None

    @property
    def part_slices(self) -> tuple[tuple[int, int], ...]:
        """(start, length) of each part's output features on this rank."""
        if self.output_slices is not None:
            return self.output_slices
        if self.split == "row":
            return tuple((0, size) for size in self.output_sizes)
        world_size, rank = self.tp.world_size, self.tp.rank
        return tuple(
            (rank * (size // world_size), size // world_size) for size in self.output_sizes
        )

    @property
    def local_input_size(self) -> int:
        if self.split == "row":
            return self.input_size // self.tp.world_size
        return self.input_size

    @property
    def local_output_sizes(self) -> tuple[int, ...]:
        return tuple(length for _, length in self.part_slices)

    @property
    def local_output_size(self) -> int:
        return sum(self.local_output_sizes)

    @property
    def num_parts(self) -> int:
        return len(self.output_sizes)

    def part_index(self, shard_id: ShardId) -> int:
        if shard_id not in self.part_ids:
            expected = ", ".join(repr(part) for part in self.part_ids)
            raise CheckpointError(f"shard id {shard_id!r} is not one of this layer's ({expected})")
        return self.part_ids.index(shard_id)


@dataclass(frozen=True)
class ShardedDims:
    """How one parameter's tensor dims relate to the layer's features.

    E.g. GPTQ's qweight [in / 8, out]: ShardedDims(output_dim=1, input_dim=0, input_divisor=8);
    its scales [in / group_size, out]: ShardedDims(output_dim=1, input_dim=0, input_divisor=
    group_size); a per-tensor fp8 scale of each fused part [num_parts]: ShardedDims(per_part=
    True). input_dim None on a row-parallel layer means "every rank keeps all of it".
    """

    output_dim: int | None = None
    output_divisor: int = 1  # output features per element along output_dim
    input_dim: int | None = None
    input_divisor: int = 1  # input features per element along input_dim
    per_part: bool = False  # one scalar per fused part


def _slice_count(size: int, divisor: int, what: str) -> int:
    if size % divisor != 0:
        raise CheckpointError(f"{what} of {size} features do not divide into units of {divisor}")
    return size // divisor


def load_sharded(
    shape: LinearShape,
    dims: ShardedDims,
    param: nn.Parameter,
    loaded: Loaded,
    shard_id: ShardId,
) -> None:
    """Copy this rank's slice of checkpoint tensor `loaded` (fused part `shard_id`) into param;
    of a lazy CheckpointSlice only that slice is read."""
    part = shape.part_index(shard_id)
    if dims.per_part:
        scalar = read_loaded(loaded)
        if scalar.numel() != 1:
            raise CheckpointError(f"expected a per-tensor scalar, got shape {tuple(scalar.shape)}")
        param.data[part].copy_(scalar.reshape(()))
        return
    target = param.data
    whole_output = shape.num_parts == 1 and shape.part_slices[0] == (0, shape.output_sizes[0])
    if dims.output_dim is not None and not whole_output:
        local_sizes = shape.local_output_sizes
        offset = _slice_count(sum(local_sizes[:part]), dims.output_divisor, "fused offset")
        length = _slice_count(local_sizes[part], dims.output_divisor, "output slice")
        target = target.narrow(dims.output_dim, offset, length)
        if shape.split == "column":
            start = _slice_count(shape.part_slices[part][0], dims.output_divisor, "output start")
            _check_full_size(loaded, dims, shape.output_sizes[part])
            loaded = narrow_loaded(loaded, dims.output_dim, start, length)
    elif dims.output_dim is None and shape.num_parts > 1:
        loaded = read_loaded(loaded)
        _check_shared_across_parts(param, loaded, part)
    if dims.input_dim is not None and shape.split == "row":
        loaded = shape.tp.shard(loaded, dims.input_dim)
    copy_checked(target, loaded, f"part {part}" if shape.num_parts > 1 else "linear parameter")


def _check_full_size(loaded: Loaded, dims: ShardedDims, output_size: int) -> None:
    """The checkpoint tensor covers the part's full output (a slice of it could hide a bug)."""
    assert dims.output_dim is not None
    expected = -(-output_size // dims.output_divisor)  # block scales round up: ceil(N / block)
    if loaded.shape[dims.output_dim] != expected:
        raise CheckpointError(
            f"checkpoint dimension {dims.output_dim} has {loaded.shape[dims.output_dim]} "
            f"elements, {expected} expected for {output_size} output features"
        )


def _check_shared_across_parts(param: nn.Parameter, loaded: torch.Tensor, part: int) -> None:
    """A part-independent tensor (e.g. q/k/v's g_idx): every part must bring the same one."""
    loaded_parts: set[int] = getattr(param, _LOADED_PARTS_ATTRIBUTE)
    if loaded_parts and not torch.equal(param.data.cpu(), loaded.to(param.dtype).cpu()):
        raise CheckpointError(
            "fused parts disagree on a tensor they must share (e.g. act-order g_idx of q/k/v); "
            "this checkpoint cannot be served with fused projections"
        )
    loaded_parts.add(part)


def sharded_parameter(
    shape: LinearShape, dims: ShardedDims, tensor_shape: tuple[int, ...], dtype: torch.dtype
) -> nn.Parameter:
    """An uninitialized frozen parameter whose weight loader slices by `dims`."""
    data = torch.empty(tensor_shape, dtype=dtype, device=shape.device)
    param = nn.Parameter(data, requires_grad=False)

    def loader(target: nn.Parameter, loaded: torch.Tensor, shard_id: ShardId) -> None:
        load_sharded(shape, dims, target, loaded, shard_id)

    attach_weight_loader(param, loader, takes_slices=True)
    if dims.output_dim is None and not dims.per_part:
        setattr(param, _LOADED_PARTS_ATTRIBUTE, set())
    return param


class QuantizationMethod(Protocol):
    """One quantization scheme's storage and matmul for one linear layer."""

    name: str

    def create_weights(self, layer: nn.Module, shape: LinearShape) -> None:
        """Register the layer's checkpoint parameters (with loaders) on `layer`."""

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Turn the loaded parameters into what apply() reads."""

    def apply(
        self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:  # x [T, in_local] -> [T, out_local]
        """x W^T (+ bias) in x's dtype."""
