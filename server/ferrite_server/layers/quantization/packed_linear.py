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

from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F

from ferrite_server.layers.quantization.int_packing import (
    AWQ_ORDER,
    pack_factor,
    pack_int32,
    unpack_int32,
)

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
    # Set when g_idx[k] == k // group_size for every k (no act-order): kernels may compute
    # groups instead of gathering them. None: unknown or act-order.
    sequential_group_size: int | None = None

    @property
    def in_features(self) -> int:
        return int(self.g_idx.shape[0])

    @property
    def out_features(self) -> int:
        return int(self.scales.shape[1])

    @property
    def order(self) -> tuple[int, ...] | None:
        return AWQ_ORDER if self.layout == "awq" else None


def sequential_group_size_of(g_idx: torch.Tensor, group_size: int) -> int | None:
    """group_size if g_idx is k // group_size (checked once, at load), else None."""
    if group_size <= 0:
        return None
    expected = torch.arange(g_idx.shape[0], device=g_idx.device) // group_size
    return group_size if torch.equal(g_idx.long(), expected) else None


def awq_as_gptq_layout(weights: PackedIntWeights) -> PackedIntWeights:
    """The same weights in GPTQ's layout: codes packed along K, zeros along N in plain order.

    The kernel's GPTQ path streams whole rows of words; AWQ's [K, N / 8] words give each K row
    only a few contiguous words per tile, and measured 10x slower than GPTQ on an H100 at the
    8B shape (bench/RESULTS.md), so AWQ checkpoints are repacked once, at load.
    """
    if weights.layout == "gptq" or weights.in_features % pack_factor(weights.bits) != 0:
        return weights  # (a K that does not fill words keeps AWQ's layout, which the kernel reads)
    codes = unpack_int32(weights.qweight, weights.bits, 1, weights.order)  # [K, N]
    zeros = unpack_int32(weights.qzeros, weights.bits, 1, weights.order)  # [G, N]
    return replace(
        weights,
        qweight=pack_int32(codes, weights.bits, 0),
        qzeros=pack_int32(zeros, weights.bits, 1),
        layout="gptq",
    )


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
