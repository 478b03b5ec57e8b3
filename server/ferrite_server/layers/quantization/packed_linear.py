"""GPTQ / AWQ packed-integer weights of one layer, their dequantization, and y = x W^T.

W[n, k] = (q[k, n] - (z[g(k), n] + zero_offset)) * s[g(k), n], with q and z unpacked from int32
words (int_packing.py) and g(k) = g_idx[k] the quantization group of input feature k (act-order
checkpoints permute groups, so g_idx is read, never assumed to be k // group_size).

Matmul paths: the Triton dequantize-matmul kernel (kernels/packed_int_matmul.py) for few rows
(decode) on CUDA, or on CPU under Triton's interpreter; otherwise the weight is dequantized
once and a dense matmul does the rest: prefill on GPU, and everything on CPU, where it is exact
but dequantizes the weight on every call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ferrite_server.layers.quantization.int_packing import AWQ_ORDER, unpack_int32

PackedLayout = Literal["gptq", "awq"]
# Rows (tokens) from which dequantizing once + a dense matmul beats the fused kernel.
DEQUANT_MIN_TOKENS = 64


@dataclass(frozen=True)
class PackedIntWeights:
    """One linear layer's packed weights, as loaded from a GPTQ or AWQ checkpoint."""

    qweight: torch.Tensor  # int32; gptq [K / pack, N], awq [K, N / pack]
    qzeros: torch.Tensor  # int32 [G, N / pack]
    scales: torch.Tensor  # float [G, N]
    g_idx: torch.Tensor  # int32 [K]: group of each input feature
    bits: int
    layout: PackedLayout
    zero_offset: int = 0  # added to stored zeros (GPTQ's original format stores zero - 1)

    @property
    def in_features(self) -> int:
        return int(self.g_idx.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.scales.shape[1])

    @property
    def order(self) -> tuple[int, ...] | None:
        return AWQ_ORDER if self.layout == "awq" else None


def dequantize_packed(weights: PackedIntWeights, dtype: torch.dtype) -> torch.Tensor:
    """The float weight [N, K] (the torch reference of what the kernel multiplies by)."""
    weight_dim = 0 if weights.layout == "gptq" else 1
    q = unpack_int32(weights.qweight, weights.bits, weight_dim, weights.order)  # [K, N]
    zeros = unpack_int32(weights.qzeros, weights.bits, 1, weights.order) + weights.zero_offset
    groups = weights.g_idx.long()
    scales = weights.scales.float()[groups]  # [K, N]
    dequantized = (q - zeros[groups]).float() * scales  # [K, N]
    return dequantized.t().to(dtype)


def packed_kernel_available(device: torch.device) -> bool:
    """CUDA, or CPU under Triton's interpreter (TRITON_INTERPRET=1: tests)."""
    if device.type == "cuda":
        return True
    import triton  # only here: CPU serving never needs Triton

    return bool(triton.knobs.runtime.interpret)


def packed_int_linear(x: torch.Tensor, weights: PackedIntWeights, use_kernel: bool) -> torch.Tensor:
    """x [M, K] -> [M, N] in x's dtype."""
    if use_kernel and x.shape[0] < DEQUANT_MIN_TOKENS:
        from ferrite_server.kernels.packed_int_matmul import packed_int_matmul

        return packed_int_matmul(x.contiguous(), weights)
    return F.linear(x, dequantize_packed(weights, x.dtype))
