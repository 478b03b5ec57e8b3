"""No quantization: a float weight [out_local, in_local] in the compute dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ferrite_server.layers.quantization.method import LinearShape, ShardedDims, sharded_parameter

# weight [out, in]: dim 0 runs along the output features, dim 1 along the input features.
WEIGHT_DIMS = ShardedDims(output_dim=0, input_dim=1)


def create_float_weight(layer: nn.Module, shape: LinearShape) -> None:
    """`layer.weight` [out_local, in_local] in the compute dtype, loaded with TP slicing."""
    layer.weight = sharded_parameter(
        shape, WEIGHT_DIMS, (shape.local_output_size, shape.local_input_size), shape.dtype
    )


class UnquantizedMethod:
    name = ""

    def create_weights(self, layer: nn.Module, shape: LinearShape) -> None:
        create_float_weight(layer, shape)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        pass

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, layer.weight, bias)
