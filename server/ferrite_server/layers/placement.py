"""Where a layer's parameters live: dtype, device, tensor-parallel rank (and group) and
quantization.

Layers allocate their parameters uninitialized (`torch.empty`) directly in the final dtype on
the final device; the checkpoint's tensors are then copied in by per-parameter weight loaders
(`ferrite_server.weights`). Nothing is randomly initialized and nothing is moved afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from ferrite_server.layers.parallel_group import TensorParallelGroup
from ferrite_server.weights import TensorParallelRank

if TYPE_CHECKING:
    from ferrite_server.layers.quantization.config import QuantizationConfig


@dataclass(frozen=True)
class LayerPlacement:
    dtype: torch.dtype
    device: torch.device
    tp: TensorParallelRank = field(default_factory=TensorParallelRank)
    # The collectives of `tp`'s group (row-parallel sums, vocabulary gathers).
    group: TensorParallelGroup = field(default_factory=TensorParallelGroup)
    # How linear layers store their weights (None: unquantized); other layers ignore it.
    quantization: QuantizationConfig | None = None

    @classmethod
    def for_group(
        cls, dtype: torch.dtype, device: torch.device, group: TensorParallelGroup
    ) -> LayerPlacement:
        return cls(dtype, device, TensorParallelRank(group.rank, group.world_size), group)

    def empty_parameter(self, *shape: int) -> nn.Parameter:
        """An uninitialized, frozen parameter; a weight loader fills it."""
        data = torch.empty(shape, dtype=self.dtype, device=self.device)
        return nn.Parameter(data, requires_grad=False)
