"""A checkpoint tensor that is not read yet, so a tensor-parallel rank reads only its slice.

safetensors' `get_slice` gives a tensor's shape and dtype without reading it, and reads any
rectangular part on request: rank r of N reading the rows or columns it keeps touches 1/N of
the bytes and never holds the whole weight (the point of tensor parallelism: a model too big
for one device must never be whole in one process).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class _SafetensorsSlice(Protocol):
    """The part of safetensors' PySafeSlice used here."""

    def get_shape(self) -> list[int]: ...
    def __getitem__(self, index: Any) -> torch.Tensor: ...


class CheckpointSlice:
    """One tensor of an open safetensors file; valid while the file is open."""

    def __init__(self, name: str, lazy: _SafetensorsSlice) -> None:
        self.name = name
        self._lazy = lazy
        self.shape = torch.Size(lazy.get_shape())

    def read(self) -> torch.Tensor:
        """The whole tensor."""
        return self._lazy[:] if len(self.shape) > 0 else self._lazy[()]

    def narrow(self, dim: int, start: int, length: int) -> torch.Tensor:
        """Elements [start, start + length) along `dim` and everything along the others; only
        those bytes are read."""
        if not 0 <= start <= start + length <= self.shape[dim]:
            raise IndexError(
                f"{self.name}: rows [{start}, {start + length}) of dimension {dim} "
                f"(size {self.shape[dim]})"
            )
        index = [slice(None)] * len(self.shape)
        index[dim] = slice(start, start + length)
        return self._lazy[tuple(index)]

    def __repr__(self) -> str:
        return f"CheckpointSlice({self.name!r}, shape={tuple(self.shape)})"


class CheckpointPart(CheckpointSlice):
    """Rows [start, start + length) along `dim` of a tensor not read yet: one part of a fused
    checkpoint tensor (Phi-3's qkv_proj holds q, k and v side by side), itself still lazy, so a
    tensor-parallel rank reads only its slice of that part."""

    def __init__(self, parent: CheckpointSlice, dim: int, start: int, length: int) -> None:
        if not 0 <= start <= start + length <= parent.shape[dim]:
            raise IndexError(f"{parent.name}: part [{start}, {start + length}) of dim {dim}")
        self.name = f"{parent.name}[{start}:{start + length}]"
        self._lazy = parent._lazy
        self._index = list(getattr(parent, "_index", [slice(None)] * len(parent.shape)))
        base = self._index[dim]
        offset = base.start or 0
        self._index[dim] = slice(offset + start, offset + start + length)
        shape = list(parent.shape)
        shape[dim] = length
        self.shape = torch.Size(shape)

    def read(self) -> torch.Tensor:
        return self._lazy[tuple(self._index)]

    def narrow(self, dim: int, start: int, length: int) -> torch.Tensor:
        return CheckpointPart(self, dim, start, length).read()


# What a weight loader may be handed: a tensor, or a slice it reads from.
Loaded = torch.Tensor | CheckpointSlice


def read_loaded(loaded: Loaded) -> torch.Tensor:
    return loaded.read() if isinstance(loaded, CheckpointSlice) else loaded


def narrow_loaded(loaded: Loaded, dim: int, start: int, length: int) -> torch.Tensor:
    """`loaded.narrow(dim, start, length)`, reading only that part of a CheckpointSlice."""
    return loaded.narrow(dim, start, length)
