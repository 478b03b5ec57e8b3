"""bitsandbytes: LLM.int8 (`bitsandbytes`) and 4-bit NF4 / FP4 weights, quantized at load time.

The float weight loads as usual (with its tensor-parallel slice), then the bitsandbytes package
quantizes it on the device it lives on (CPU or CUDA):
- int8: per-row absmax to int8 (`int8_vectorwise_quant`); matmuls through `bnb.matmul` with
  the LLM.int8 outlier threshold (activation columns above it run in 16-bit);
- nf4 / fp4: blocks of 64 values share an absmax scale, double-quantized
  (`compress_statistics`); matmuls through `bnb.matmul_4bit`.
Pre-quantized bitsandbytes checkpoints are dequantized while they are read
(bitsandbytes_checkpoint.py) and take the same path; requantizing reproduces their codes.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ferrite_server.layers.quantization.method import LinearShape
from ferrite_server.layers.quantization.unquantized import create_float_weight

BnbKind = Literal["int8", "nf4", "fp4"]
# LLM.int8: activation columns with a magnitude above this run in 16-bit (the paper's 6.0).
INT8_OUTLIER_THRESHOLD = 6.0
BLOCKSIZE_4BIT = 64


@dataclass(frozen=True)
class BnbParams:
    kind: BnbKind
    # Double quantization of the 4-bit absmax scales (saves ~0.4 bits per weight).
    compress_statistics: bool = True


def _quiet_bnb() -> None:
    # bnb warns on every first call that bfloat16 inputs are cast to float16 for int8; that is
    # how LLM.int8 works, not something a user can act on.
    warnings.filterwarnings("ignore", message=".*inputs will be cast from.*", module="bitsandbytes")


class BitsAndBytesMethod:
    def __init__(self, params: BnbParams) -> None:
        self.params = params
        self.name = "bitsandbytes" if params.kind == "int8" else f"bitsandbytes-{params.kind}"

    def create_weights(self, layer: nn.Module, shape: LinearShape) -> None:
        create_float_weight(layer, shape)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        import bitsandbytes.functional as bnb_functional
        from bitsandbytes import MatmulLtState

        _quiet_bnb()
        weight = layer.weight.data  # [N, K]
        layer.bnb_out_features = weight.shape[0]
        del layer.weight
        if self.params.kind == "int8":
            codes, row_scales, _ = bnb_functional.int8_vectorwise_quant(weight.half())
            layer.register_buffer("int8_weight", codes, persistent=False)  # int8 [N, K]
            layer.register_buffer("int8_row_scales", row_scales, persistent=False)  # f32 [N]
            state = MatmulLtState()
            state.CB, state.SCB = codes, row_scales
            state.threshold = INT8_OUTLIER_THRESHOLD
            state.has_fp16_weights = False
            state.is_training = False
            layer.bnb_state = state
            return
        packed, quant_state = bnb_functional.quantize_4bit(
            weight,
            blocksize=BLOCKSIZE_4BIT,
            compress_statistics=self.params.compress_statistics,
            quant_type=self.params.kind,
        )
        layer.register_buffer("packed_4bit", packed, persistent=False)  # uint8 [N * K / 2, 1]
        layer.bnb_state = quant_state

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        import bitsandbytes as bnb

        if self.params.kind == "int8":
            y = bnb.matmul(x, layer.int8_weight, state=layer.bnb_state)
            return (y if bias is None else y + bias).to(x.dtype)
        return bnb.matmul_4bit(x, layer.packed_4bit.t(), quant_state=layer.bnb_state, bias=bias)
