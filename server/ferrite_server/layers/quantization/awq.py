"""AWQ (GEMM format) checkpoints: 4-bit weights packed along the output features.

Tensors of one linear layer (K input, N output features, G = K / group_size groups):
    qweight int32 [K, N / 8]   packed along N in AWQ's interleaved slot order
    qzeros  int32 [G, N / 8]   same packing; zeros are stored as is
    scales  fp16  [G, N]
Groups are consecutive (group of feature k is k // group_size), so a row-parallel layer slices
qweight, qzeros and scales along K alike (each rank's K must be whole groups).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ferrite_server.engine.errors import UnsupportedModelError
from ferrite_server.layers.quantization.packed_linear import (
    PackedIntWeights,
    awq_as_gptq_layout,
    packed_int_linear,
    packed_kernel_available,
)
from ferrite_server.layers.quantization.int_packing import pack_factor
from ferrite_server.layers.quantization.method import LinearShape, ShardedDims, sharded_parameter

AWQ_BITS = 4


@dataclass(frozen=True)
class AwqParams:
    group_size: int = 128


def awq_dims(group_size: int) -> dict[str, ShardedDims]:
    pack = pack_factor(AWQ_BITS)
    return {
        "qweight": ShardedDims(output_dim=1, output_divisor=pack, input_dim=0),
        "qzeros": ShardedDims(
            output_dim=1, output_divisor=pack, input_dim=0, input_divisor=group_size
        ),
        "scales": ShardedDims(output_dim=1, input_dim=0, input_divisor=group_size),
    }


class AwqMethod:
    name = "awq"

    def __init__(self, params: AwqParams) -> None:
        self.params = params

    def _group_size(self, shape: LinearShape) -> int:
        return self.params.group_size if self.params.group_size > 0 else shape.input_size

    def create_weights(self, layer: nn.Module, shape: LinearShape) -> None:
        pack = pack_factor(AWQ_BITS)
        group_size = self._group_size(shape)
        in_local, out_local = shape.local_input_size, shape.local_output_size
        if in_local % group_size or any(size % pack for size in shape.local_output_sizes):
            raise UnsupportedModelError(
                f"AWQ layer [{shape.input_size} -> {shape.output_sizes}] does not split into whole "
                f"groups of {group_size} and words of {pack} on {shape.tp.world_size} rank(s)"
            )
        groups = in_local // group_size
        dims = awq_dims(group_size)
        layer.qweight = sharded_parameter(
            shape, dims["qweight"], (in_local, out_local // pack), torch.int32
        )
        layer.qzeros = sharded_parameter(
            shape, dims["qzeros"], (groups, out_local // pack), torch.int32
        )
        layer.scales = sharded_parameter(shape, dims["scales"], (groups, out_local), torch.float16)
        layer.awq_group_size = group_size

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        qweight = layer.qweight.data
        in_local = qweight.shape[0]
        g_idx = (
            torch.arange(in_local, dtype=torch.int32, device=qweight.device) // layer.awq_group_size
        )
        layer.register_buffer("g_idx", g_idx, persistent=False)
        packed = awq_as_gptq_layout(
            PackedIntWeights(
                qweight=qweight,
                qzeros=layer.qzeros.data,
                scales=layer.scales.data,
                g_idx=g_idx,
                bits=AWQ_BITS,
                layout="awq",
                sequential_group_size=layer.awq_group_size,
            )
        )
        # The parameters hold the repacked words, so the AWQ-layout copies are freed.
        layer.qweight.data, layer.qzeros.data = packed.qweight, packed.qzeros
        layer.packed = packed
        layer.use_packed_kernel = packed_kernel_available(qweight.device)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        y = packed_int_linear(x, layer.packed, layer.use_packed_kernel)
        return y if bias is None else y + bias
