"""GPTQ checkpoints: packed integer weights with per-group scales / zeros and act-order g_idx.

Tensors of one linear layer (K input, N output features, pack = 32 // bits, G groups):
    qweight int32 [K / pack, N]   packed along K, sequential slots
    qzeros  int32 [G, N / pack]   packed along N; the original format stores zero - 1
                                  (`checkpoint_format` "gptq"), "gptq_v2" stores the zero itself
    scales  fp16  [G, N]
    g_idx   int32 [K]             group of each input feature (a permutation under act-order)
Tensor parallelism: a column-parallel layer slices N everywhere (qzeros by N / pack); a
row-parallel layer slices K of qweight and g_idx and keeps every group's scales and zeros, since
under act-order a rank's input features may belong to any group (and g_idx stays global).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ferrite_server.engine.errors import UnsupportedModelError
from ferrite_server.layers.quantization.packed_linear import (
    PackedIntWeights,
    sequential_group_size_of,
    packed_int_linear,
    packed_kernel_available,
)
from ferrite_server.layers.quantization.int_packing import pack_factor
from ferrite_server.layers.quantization.method import LinearShape, ShardedDims, sharded_parameter


@dataclass(frozen=True)
class GptqParams:
    bits: int = 4
    group_size: int = 128  # -1 in the checkpoint: one group over all input features
    desc_act: bool = False  # act-order (informational: g_idx is always honoured)
    zero_offset: int = 1  # 1 for the original format (zeros stored minus one), 0 for gptq_v2


def num_groups(input_size: int, group_size: int) -> int:
    return 1 if group_size <= 0 else -(-input_size // group_size)


def gptq_dims(bits: int) -> dict[str, ShardedDims]:
    pack = pack_factor(bits)
    return {
        "qweight": ShardedDims(output_dim=1, input_dim=0, input_divisor=pack),
        "qzeros": ShardedDims(output_dim=1, output_divisor=pack),
        "scales": ShardedDims(output_dim=1),
        "g_idx": ShardedDims(input_dim=0),
    }


class GptqMethod:
    name = "gptq"

    def __init__(self, params: GptqParams) -> None:
        self.params = params

    def create_weights(self, layer: nn.Module, shape: LinearShape) -> None:
        pack = pack_factor(self.params.bits)
        in_local, out_local = shape.local_input_size, shape.local_output_size
        if in_local % pack or any(size % pack for size in shape.local_output_sizes):
            raise UnsupportedModelError(
                f"GPTQ layer [{shape.input_size} -> {shape.output_sizes}] does not split into "
                f"{pack}-value words on {shape.tp.world_size} rank(s)"
            )
        groups = num_groups(shape.input_size, self.params.group_size)
        dims = gptq_dims(self.params.bits)
        layer.qweight = sharded_parameter(
            shape, dims["qweight"], (in_local // pack, out_local), torch.int32
        )
        layer.qzeros = sharded_parameter(
            shape, dims["qzeros"], (groups, out_local // pack), torch.int32
        )
        layer.scales = sharded_parameter(shape, dims["scales"], (groups, out_local), torch.float16)
        layer.g_idx = sharded_parameter(shape, dims["g_idx"], (in_local,), torch.int32)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        layer.packed = PackedIntWeights(
            qweight=layer.qweight.data,
            qzeros=layer.qzeros.data,
            scales=layer.scales.data,
            g_idx=layer.g_idx.data,
            bits=self.params.bits,
            layout="gptq",
            zero_offset=self.params.zero_offset,
            sequential_group_size=sequential_group_size_of(
                layer.g_idx.data, self.params.group_size if self.params.group_size > 0
                else layer.g_idx.shape[0]
            ),
        )
        layer.use_packed_kernel = packed_kernel_available(layer.qweight.device)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        y = packed_int_linear(x, layer.packed, layer.use_packed_kernel)
        return y if bias is None else y + bias
