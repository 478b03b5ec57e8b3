"""Checkpoint loading: safetensors files -> per-parameter weight loaders.

A checkpoint is `config.json` plus either one `model.safetensors` or several shards listed by
`model.safetensors.index.json`. Tensors are read one at a time (on the target device when it is
a GPU) and handed to the weight loader of the parameter they belong to; the parameter already
has its final dtype and device, so `copy_` converts in place and nothing is materialized twice.

Why per-parameter loaders: a parameter knows its own layout. A fused qkv projection takes the
checkpoint's separate q / k / v tensors into slices of one matrix; a tensor-parallel layer
keeps only its rank's slice (`TensorParallelRank.shard`). The checkpoint walker below stays
generic: it only maps names.

Tensor parallelism: a rank must never hold a whole weight it keeps a slice of. The walker hands
each tensor over as a `CheckpointSlice` (safetensors' lazy slice: shape known, nothing read
yet); loaders registered with `takes_slices=True` read only their rows / columns
(`narrow_loaded`, `TensorParallelRank.shard`), other loaders get the whole tensor read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ferrite_server.checkpoint_slice import (
    CheckpointPart,
    CheckpointSlice,
    Loaded,
    narrow_loaded,
    read_loaded,
)
from ferrite_server.engine.errors import UnsupportedModelError

SINGLE_FILE_NAME = "model.safetensors"
INDEX_FILE_NAME = "model.safetensors.index.json"
# Attribute under which a parameter carries its loader.
_LOADER_ATTRIBUTE = "weight_loader"
# Attribute marking a loader that accepts a CheckpointSlice (reads only what it keeps).
_TAKES_SLICES_ATTRIBUTE = "weight_loader_takes_slices"

ShardId = str | int | None
# loader(param, loaded_tensor, shard_id): copies (its slice of) a checkpoint tensor into param.
# Loaders attached with takes_slices=True may receive a CheckpointSlice instead of a tensor.
WeightLoader = Callable[[nn.Parameter, torch.Tensor, ShardId], None]


class CheckpointError(UnsupportedModelError):
    """The checkpoint's files or tensors do not fit the model (missing, unexpected, bad shape)."""


@dataclass(frozen=True)
class TensorParallelRank:
    """This process's place in a tensor-parallel group; rank r keeps the r-th equal slice."""

    rank: int = 0
    world_size: int = 1

    def shard(self, tensor: Loaded, dim: int) -> torch.Tensor:
        """This rank's slice of `tensor` along `dim` (the whole tensor when world_size is 1);
        of a CheckpointSlice only that slice is read."""
        if self.world_size == 1:
            return read_loaded(tensor)
        size = tensor.shape[dim]
        if size % self.world_size != 0:
            raise CheckpointError(
                f"dimension {dim} of size {size} does not split over {self.world_size} ranks"
            )
        slice_size = size // self.world_size
        return narrow_loaded(tensor, dim, self.rank * slice_size, slice_size)


def copy_checked(target: torch.Tensor, loaded: Loaded, what: str) -> None:
    """Copy with dtype/device conversion, refusing shape mismatches (never broadcast)."""
    if tuple(target.shape) != tuple(loaded.shape):
        raise CheckpointError(
            f"{what}: checkpoint shape {tuple(loaded.shape)} != "
            f"parameter shape {tuple(target.shape)}"
        )
    target.copy_(read_loaded(loaded))


def default_weight_loader(param: nn.Parameter, loaded: torch.Tensor, shard_id: ShardId) -> None:
    """A replicated parameter: the checkpoint tensor as is."""
    if shard_id is not None:
        raise CheckpointError(f"parameter of shape {tuple(param.shape)} is not fused")
    copy_checked(param.data, loaded, "parameter")


def attach_weight_loader(
    param: nn.Parameter, loader: WeightLoader, takes_slices: bool = False
) -> None:
    """`takes_slices`: the loader accepts a CheckpointSlice and reads only what it keeps."""
    setattr(param, _LOADER_ATTRIBUTE, loader)
    setattr(param, _TAKES_SLICES_ATTRIBUTE, takes_slices)


def weight_loader_of(param: nn.Parameter) -> WeightLoader:
    loader: WeightLoader = getattr(param, _LOADER_ATTRIBUTE, default_weight_loader)
    return loader


def _loader_input(param: nn.Parameter, loaded: Loaded) -> Loaded:
    """What `param`'s loader is handed: the lazy slice if it reads slices, else the tensor.
    The default loader copies the whole tensor either way, so it reads lazily too."""
    takes_slices = getattr(param, _TAKES_SLICES_ATTRIBUTE, not hasattr(param, _LOADER_ATTRIBUTE))
    return loaded if takes_slices else read_loaded(loaded)


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, in a stable order."""
    index_path = model_dir / INDEX_FILE_NAME
    if index_path.is_file():
        weight_map: dict[str, str] = json.loads(index_path.read_text())["weight_map"]
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
    elif (model_dir / SINGLE_FILE_NAME).is_file():
        files = [model_dir / SINGLE_FILE_NAME]
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no safetensors weights in {model_dir}")
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise CheckpointError(f"checkpoint index names missing files: {missing}")
    return files


def iter_checkpoint_tensors(
    model_dir: Path, device: torch.device
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of the checkpoint, read on `device` when it is a GPU."""
    for name, lazy in iter_checkpoint_slices(model_dir, device):
        yield name, lazy.read()


def iter_checkpoint_slices(
    model_dir: Path, device: torch.device
) -> Iterator[tuple[str, CheckpointSlice]]:
    """(name, lazy slice) for every tensor of the checkpoint; reads happen on `device` when it
    is a GPU. A slice is only valid until the next one is requested (its file may close)."""
    read_device = str(device) if device.type == "cuda" else "cpu"
    for path in checkpoint_files(model_dir):
        with safe_open(str(path), framework="pt", device=read_device) as handle:
            for name in handle.keys():
                yield name, CheckpointSlice(name, handle.get_slice(name))


@dataclass(frozen=True)
class PackedWeight:
    """A checkpoint tensor that lands in a slice of a fused parameter.

    E.g. PackedWeight(".q_proj.", ".qkv_proj.", "q"): `...self_attn.q_proj.weight` loads into
    `...self_attn.qkv_proj.weight` with shard id "q".
    """

    checkpoint_part: str
    param_part: str
    shard_id: str | int


@dataclass(frozen=True)
class FusedCheckpointWeight:
    """A checkpoint tensor that already holds several parts of a fused parameter side by side
    along dim 0 (Phi-3's `qkv_proj` = [q | k | v], `gate_up_proj` = [gate | up]).

    Each part is handed to the parameter's loader under its shard id, as if the checkpoint had
    stored it separately, so tensor-parallel slicing stays the loader's business.
    """

    checkpoint_part: str  # e.g. ".qkv_proj."
    parts: tuple[tuple[str | int, int], ...]  # (shard id, rows) in checkpoint order


@dataclass(frozen=True)
class CheckpointLayout:
    """How a model's parameter names relate to its checkpoint's tensor names."""

    packed: Sequence[PackedWeight] = ()
    # Tensors to skip: exact names (e.g. a tied `lm_head.weight`) or name suffixes (buffers).
    ignored_names: frozenset[str] = frozenset()
    ignored_suffixes: tuple[str, ...] = ("rotary_emb.inv_freq",)
    fused: Sequence[FusedCheckpointWeight] = ()

    def is_ignored(self, name: str) -> bool:
        return name in self.ignored_names or name.endswith(self.ignored_suffixes)

    def resolve(self, name: str) -> tuple[str, ShardId]:
        for packed in self.packed:
            if packed.checkpoint_part in name:
                return name.replace(packed.checkpoint_part, packed.param_part), packed.shard_id
        return name, None

    def expected_shard_ids(self, param_name: str) -> set[ShardId]:
        ids: set[ShardId] = {p.shard_id for p in self.packed if p.param_part in param_name}
        for fused in self.fused:
            if fused.checkpoint_part in param_name:
                ids.update(shard_id for shard_id, _ in fused.parts)
        return ids or {None}

    def split(self, name: str, loaded: Loaded) -> list[tuple[str, Loaded, ShardId]]:
        """(parameter name, tensor, shard id) for each piece a checkpoint tensor feeds."""
        for fused in self.fused:
            if fused.checkpoint_part not in name:
                continue
            total_rows = sum(rows for _, rows in fused.parts)
            if loaded.shape[0] != total_rows:
                raise CheckpointError(
                    f"{name}: fused tensor has {loaded.shape[0]} rows, its parts {total_rows}"
                )
            lazy = loaded if isinstance(loaded, CheckpointSlice) else None
            pieces: list[tuple[str, Loaded, ShardId]] = []
            start = 0
            for shard_id, rows in fused.parts:
                part: Loaded = (
                    CheckpointPart(lazy, 0, start, rows)
                    if lazy is not None
                    else loaded.narrow(0, start, rows)  # type: ignore[union-attr]
                )
                pieces.append((name, part, shard_id))
                start += rows
            return pieces
        param_name, shard_id = self.resolve(name)
        return [(param_name, loaded, shard_id)]


def load_named_tensors(
    module: nn.Module, tensors: Iterable[tuple[str, Loaded]], layout: CheckpointLayout
) -> None:
    """Hand each checkpoint tensor to its parameter's loader; every parameter must be filled."""
    params = dict(module.named_parameters())  # tied parameters appear once
    loaded: dict[str, set[ShardId]] = {name: set() for name in params}
    for name, tensor in tensors:
        if layout.is_ignored(name):
            continue
        for param_name, piece, shard_id in layout.split(name, tensor):
            param = params.get(param_name)
            if param is None:
                raise CheckpointError(f"checkpoint tensor {name!r} matches no model parameter")
            try:
                loader_input = _loader_input(param, piece)
                weight_loader_of(param)(param, loader_input, shard_id)  # type: ignore[arg-type]
            except CheckpointError as error:
                raise CheckpointError(f"{name}: {error}") from error
            loaded[param_name].add(shard_id)
    missing = [
        name for name, shard_ids in loaded.items() if shard_ids != layout.expected_shard_ids(name)
    ]
    if missing:
        raise CheckpointError(f"checkpoint lacks tensors for parameters: {missing[:8]}")


def load_checkpoint(
    module: nn.Module, model_dir: Path, device: torch.device, layout: CheckpointLayout
) -> None:
    load_named_tensors(module, iter_checkpoint_slices(model_dir, device), layout)
