"""FP8 (e4m3) weights: quantized on the fly from a float checkpoint, or loaded from an FP8 one.

On the fly (`--quantize fp8` on a float checkpoint): the float weight loads as usual, then each
output channel is scaled so its largest magnitude maps to e4m3's 448 (per-channel scales).

FP8 checkpoints (config.json quantization_config.quant_method "fp8"):
- per-tensor: `weight` (e4m3) and a scalar `weight_scale` per checkpoint tensor, so a fused
  q/k/v layer has one scale per part; `input_scale` (static activation scales) is read and
  ignored: activations are scaled per token at run time, which is at least as accurate;
- block-wise (`weight_block_size` [bn, bk]): `weight_scale_inv` [ceil(N / bn), ceil(K / bk)],
  one scale per block, multiplied in (despite the name, as transformers and vLLM read it).
After loading, per-tensor scales become per-channel ones (exact). Block scales stay as they are
for the dequantizing fallback; on FP8 GPUs the weight is requantized per channel (one extra
rounding) so that torch._scaled_mm's rowwise scaling runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ferrite_server.engine.errors import UnsupportedModelError
from ferrite_server.layers.quantization.fp8_ops import (
    FP8_DTYPE,
    dequantize_blocks,
    fp8_dequant_linear,
    fp8_matmul_available,
    fp8_weight_kernel_available,
    fp8_scaled_mm,
    quantize_per_channel,
    requantize_blocks_per_channel,
    scaled_mm_supports,
)
from ferrite_server.layers.quantization.method import LinearShape, ShardedDims, sharded_parameter
from ferrite_server.layers.quantization.unquantized import WEIGHT_DIMS, create_float_weight


# Decode-sized batches take the weight-only kernel (kernels/fp8_weight_matmul.py), which reads
# e4m3 weights and widens them; larger ones quantize activations for torch._scaled_mm.
FP8_WEIGHT_KERNEL_MAX_ROWS = 32


@dataclass(frozen=True)
class Fp8Params:
    from_checkpoint: bool = False  # False: quantize a float checkpoint on the fly
    block_size: tuple[int, int] | None = None  # checkpoint block scales [bn, bk]
    static_input_scales: bool = False  # checkpoint carries input_scale tensors (ignored)


def _replace_weight(layer: nn.Module, weight: torch.Tensor, channel_scales: torch.Tensor) -> None:
    layer.weight = nn.Parameter(weight, requires_grad=False)
    layer.register_buffer("channel_scales", channel_scales.float().contiguous(), persistent=False)
    layer.use_scaled_mm = fp8_matmul_available(weight.device) and scaled_mm_supports(weight)
    layer.use_weight_kernel = fp8_weight_kernel_available(weight.device)


def apply_per_channel(layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if layer.use_weight_kernel and x.shape[0] <= FP8_WEIGHT_KERNEL_MAX_ROWS:
        from ferrite_server.kernels.fp8_weight_matmul import fp8_weight_matmul

        y = fp8_weight_matmul(x.contiguous(), layer.weight, layer.channel_scales)
    elif layer.use_scaled_mm:
        y = fp8_scaled_mm(x, layer.weight, layer.channel_scales)
    else:
        y = fp8_dequant_linear(x, layer.weight, layer.channel_scales)
    return y if bias is None else y + bias


class Fp8OnTheFlyMethod:
    name = "fp8"

    def create_weights(self, layer: nn.Module, shape: LinearShape) -> None:
        create_float_weight(layer, shape)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        weight, scales = quantize_per_channel(layer.weight.data)
        _replace_weight(layer, weight, scales)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return apply_per_channel(layer, x, bias)


class Fp8CheckpointMethod:
    name = "fp8"

    def __init__(self, params: Fp8Params) -> None:
        self.params = params

    def create_weights(self, layer: nn.Module, shape: LinearShape) -> None:
        local = (shape.local_output_size, shape.local_input_size)
        layer.weight = sharded_parameter(shape, WEIGHT_DIMS, local, FP8_DTYPE)
        layer.fp8_part_sizes = shape.local_output_sizes
        if self.params.static_input_scales:
            per_part = ShardedDims(per_part=True)
            layer.input_scale = sharded_parameter(
                shape, per_part, (shape.num_parts,), torch.float32
            )
        if self.params.block_size is None:
            per_part = ShardedDims(per_part=True)
            layer.weight_scale = sharded_parameter(
                shape, per_part, (shape.num_parts,), torch.float32
            )
            return
        block_n, block_k = self.params.block_size
        _check_blocks(shape, block_n, block_k)
        dims = ShardedDims(output_dim=0, output_divisor=block_n, input_dim=1, input_divisor=block_k)
        blocks = (-(-local[0] // block_n), -(-local[1] // block_k))
        layer.weight_scale_inv = sharded_parameter(shape, dims, blocks, torch.float32)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        weight = layer.weight.data
        if self.params.block_size is None:
            sizes = torch.tensor(layer.fp8_part_sizes, device=weight.device)
            channel_scales = layer.weight_scale.data.repeat_interleave(sizes)  # [N]
            del layer.weight_scale
            _replace_weight(layer, weight, channel_scales)
            layer.block_scales = None
        elif fp8_matmul_available(weight.device):
            requantized, channel_scales = requantize_blocks_per_channel(
                weight, layer.weight_scale_inv.data, self.params.block_size
            )
            del layer.weight_scale_inv
            _replace_weight(layer, requantized, channel_scales)
            layer.block_scales = None
        else:
            layer.block_scales = layer.weight_scale_inv.data
        if self.params.static_input_scales:
            del layer.input_scale

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if layer.block_scales is None:
            return apply_per_channel(layer, x, bias)
        assert self.params.block_size is not None
        weight = dequantize_blocks(
            layer.weight, layer.block_scales, self.params.block_size, x.dtype
        )
        return torch.nn.functional.linear(x, weight, bias)


def _check_blocks(shape: LinearShape, block_n: int, block_k: int) -> None:
    """Fused parts and rank slices must start on block boundaries to share one scale grid."""
    ragged_parts = shape.num_parts > 1 or shape.tp.world_size > 1
    if ragged_parts and any(size % block_n for size in shape.local_output_sizes):
        raise UnsupportedModelError(
            f"FP8 block size {block_n} does not divide the output slices "
            f"{shape.local_output_sizes} of a fused or tensor-parallel layer"
        )
    if shape.split == "row" and shape.tp.world_size > 1 and shape.local_input_size % block_k:
        raise UnsupportedModelError(
            f"FP8 block size {block_k} does not divide the {shape.local_input_size} input "
            "features each rank keeps"
        )
