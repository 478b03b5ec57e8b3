"""`--quantize int8` / `--quantize int4`: weight-only integer weights, quantized at load.

The float weight loads as usual (each rank reads only its tensor-parallel slice, so fused
parts and row / column splits work as for unquantized layers), then it is quantized once
(weight_only_ops.py: int8 per output channel, int4 per group of `group_size` input features,
asymmetric) and the float copy is dropped. Activations stay in the compute dtype; the product
runs on the device's weight-only kernel.

The LM head is quantized too, to int8 for both (llama.cpp also keeps its output matrix at 6-8
bits in 4-bit files). Measured on SmolLM2-135M (a fifth of its weights are the head): an int4
head took 0.8-1.7 ms per token against 2.0-7.8 for int8 and 2.8-5.9 for bfloat16, but cost
0.04 nats per token and flipped the near-tie first token of the bundled model's France answer
("L'Étoile ..." instead of "The capital ... is Paris"), which an int8 head does not (with the
int4 body in float32 the logits equal the unquantized model's: its GGUF is Q4_1, on int4's
grid); the int8 head's cost was not measurable (bench/RESULTS.md). A tied head keeps the
float embedding for lookups and adds its own quantized copy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from ferrite_server.layers.quantization.method import LinearShape
from ferrite_server.layers.quantization.unquantized import create_float_weight
from ferrite_server.layers.quantization.weight_only_ops import (
    WeightOnlyLinear,
    quantize_int4,
    quantize_int8,
    weight_only_linear,
)

if TYPE_CHECKING:
    from ferrite_server.layers.quantization.config import QuantizationConfig

logger = logging.getLogger(__name__)

WeightOnlyName = Literal["int8", "int4"]
# Input features sharing one int4 scale and zero: 32 as GGUF's Q4 blocks (Q4_0 / Q4_1 / the
# sub-blocks of Q4_K), so their codes carry over. On the bundled SmolLM2 (Q4_1) groups of 64
# lost 0.40 nats per token where 32 lost none, at the same speed (bench/RESULTS.md).
DEFAULT_INT4_GROUP_SIZE = 32
# Buffers the product's tensors are registered under (so weight memory counts them).
_BUFFER_PREFIX = "weight_only_"


@dataclass(frozen=True)
class WeightOnlyParams:
    bits: Literal[8, 4]
    group_size: int = DEFAULT_INT4_GROUP_SIZE  # int4 only
    # None: the LM head stays in the compute dtype; 0: the same bits as the other layers.
    lm_head_bits: Literal[8, 4, 0] | None = 8

    @property
    def name(self) -> WeightOnlyName:
        return "int8" if self.bits == 8 else "int4"


def quantized_product(weight: torch.Tensor, bits: int, group_size: int) -> WeightOnlyLinear:
    """`weight` [N, K] quantized to `bits` and bound to this device's kernel."""
    if bits == 8:
        return weight_only_linear(quantize_int8(weight))
    if weight.shape[1] % group_size:
        raise ValueError(
            f"--quantize int4: group size {group_size} does not divide the {weight.shape[1]} "
            "input features of a layer (on this rank)"
        )
    return weight_only_linear(quantize_int4(weight, group_size))


def attach_product(module: nn.Module, product: WeightOnlyLinear) -> None:
    """Keep `product` on `module`, its tensors registered as (non-persistent) buffers."""
    module.weight_only_product = product
    for index, tensor in enumerate(product.memory_tensors()):
        module.register_buffer(f"{_BUFFER_PREFIX}{index}", tensor, persistent=False)


class WeightOnlyMethod:
    def __init__(self, params: WeightOnlyParams) -> None:
        self.params = params
        self.name = params.name

    def create_weights(self, layer: nn.Module, shape: LinearShape) -> None:
        create_float_weight(layer, shape)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        weight = layer.weight.data  # [N_local, K_local]
        del layer.weight
        attach_product(layer, quantized_product(weight, self.params.bits, self.params.group_size))

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        y = layer.weight_only_product(x)
        return y if bias is None else y + bias


def quantize_lm_head(head: nn.Module, quantization: QuantizationConfig | None) -> None:
    """Give `head` (layers/embedding.LMHead) a quantized product of its rows when the model's
    quantization is weight-only with `lm_head_bits`; an untied head drops its float weight."""
    params = quantization.params if quantization is not None else None
    if not isinstance(params, WeightOnlyParams) or params.lm_head_bits is None:
        return
    weight = head.weight.data  # [rows_per_rank, hidden]
    bits = params.lm_head_bits or params.bits
    attach_product(head, quantized_product(weight, bits, params.group_size))
    if not head.tied:
        del head.weight
    logger.info("LM head quantized to int%d", bits)
