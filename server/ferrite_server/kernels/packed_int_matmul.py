"""Triton dequantize-matmul for GPTQ / AWQ packed-integer weights: y = x W^T.

The weight convention and the torch reference are in layers/quantization/packed_linear.py.
The kernel tiles the output as [BLOCK_M, BLOCK_N] and walks K in BLOCK_K steps: it loads the
packed words of the tile (each word serves `pack` neighbouring elements, so the repeated loads
hit the cache), shifts and masks them, gathers each row's group scale and zero through g_idx,
and feeds the dequantized [BLOCK_K, BLOCK_N] tile to tl.dot. Weights cross memory in packed
form: 4-bit weights move a quarter of the bytes of fp16, which is what decode is bound by.

Decode (a few rows) gives few output tiles, so K is also split over SPLIT_K programs (split-K):
each writes its partial sums to its own fp32 slice and one sum adds them, which keeps results
deterministic (no atomics). Without act-order (g_idx[k] == k // group_size) and with BLOCK_K
dividing the group size, a K tile lies in one group: its scales and zeros are one row each,
computed from k instead of gathered through g_idx (measured on an H100, the gathers left an 8B
4-bit decode step 20x slower than bf16: bench/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ferrite_server.kernels.split_k import MatmulLaunch, MatmulTiles, store_tile

from ferrite_server.layers.quantization.int_packing import pack_factor
from ferrite_server.layers.quantization.packed_linear import PackedIntWeights


@triton.jit
def _packed_int_matmul_kernel(
    x_ptr,  # [M, K]
    qweight_ptr,  # int32: AWQ_LAYOUT [K, N / PACK], else [K / PACK, N]
    qzeros_ptr,  # int32 [G, N / PACK]
    scales_ptr,  # [G, N]
    g_idx_ptr,  # int32 [K]
    out_ptr,  # [M, N]; with SPLIT_K > 1: fp32 [SPLIT_K, M, N] partial sums
    M,
    N,
    K,
    stride_xm,
    stride_qweight,
    stride_qzeros,
    stride_scales,
    stride_om,
    zero_offset,
    k_per_split,  # a multiple of BLOCK_K
    BITS: tl.constexpr,
    AWQ_LAYOUT: tl.constexpr,
    GROUP_SIZE: tl.constexpr,  # 0: read each k's group from g_idx (act-order)
    SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    PACK: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < M
    col_mask = cols < N
    if AWQ_LAYOUT:
        # Column j of a word sits in slot (j // 2) + (j % 2) * 4 (AWQ_ORDER inverted).
        col_slot = (cols % PACK) // 2 + (cols % 2) * 4
    else:
        col_slot = cols % PACK
    zero_shift = col_slot * BITS  # [BLOCK_N]: zeros are packed along N in both layouts
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    k_begin = tl.program_id(2) * k_per_split
    k_end = tl.minimum(K, k_begin + k_per_split)
    for k_start in range(k_begin, k_end, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)
        k_mask = ks < k_end
        x = tl.load(
            x_ptr + rows[:, None].to(tl.int64) * stride_xm + ks[None, :],
            mask=row_mask[:, None] & k_mask[None, :],
            other=0.0,
        )  # [BLOCK_M, BLOCK_K]
        tile_mask = k_mask[:, None] & col_mask[None, :]
        if AWQ_LAYOUT:
            word_offsets = ks[:, None] * stride_qweight + (cols // PACK)[None, :]
            shifts = zero_shift[None, :]
        else:
            word_offsets = (ks // PACK)[:, None] * stride_qweight + cols[None, :]
            shifts = ((ks % PACK) * BITS)[:, None]
        words = tl.load(qweight_ptr + word_offsets, mask=tile_mask, other=0)
        q = (words >> shifts) & MASK  # [BLOCK_K, BLOCK_N]
        if GROUP_SIZE > 0:  # the whole tile is in group k_start // GROUP_SIZE
            group = k_start // GROUP_SIZE
            zero_row = tl.load(
                qzeros_ptr + group * stride_qzeros + cols // PACK, mask=col_mask, other=0
            )
            zeros = (((zero_row >> zero_shift) & MASK) + zero_offset)[None, :]  # [1, BLOCK_N]
            scales = tl.load(
                scales_ptr + group * stride_scales + cols, mask=col_mask, other=0.0
            )[None, :]
        else:
            groups = tl.load(g_idx_ptr + ks, mask=k_mask, other=0)  # [BLOCK_K]
            zero_words = tl.load(
                qzeros_ptr + groups[:, None] * stride_qzeros + (cols // PACK)[None, :],
                mask=tile_mask,
                other=0,
            )
            zeros = ((zero_words >> zero_shift[None, :]) & MASK) + zero_offset
            scales = tl.load(
                scales_ptr + groups[:, None] * stride_scales + cols[None, :],
                mask=tile_mask,
                other=0.0,
            )
        w = ((q - zeros).to(tl.float32) * scales.to(tl.float32)).to(x.dtype)  # [BLOCK_K, BLOCK_N]
        acc += tl.dot(x, w, input_precision=DOT_PRECISION)
    store_tile(out_ptr, acc, rows, cols, M, N, stride_om, SPLIT_K)


@dataclass(frozen=True)
class PackedMatmulTiles(MatmulTiles):
    pass  # MatmulTiles' defaults (block_k 64 divides the usual group size of 128)


def sequential_group_size(weights: PackedIntWeights, block_k: int) -> int:
    """The group size when g_idx is k // group_size and block_k divides it, else 0 (gather)."""
    group_size = weights.sequential_group_size or 0
    return group_size if group_size and group_size % block_k == 0 else 0


def packed_int_matmul(
    x: torch.Tensor, weights: PackedIntWeights, tiles: PackedMatmulTiles = PackedMatmulTiles()
) -> torch.Tensor:
    """x [M, K] @ W^T -> [M, N] in x's dtype, through the Triton kernel."""
    _check_args(x, weights)
    launch = MatmulLaunch.plan(x, weights.out_features, tiles)
    if launch.empty:
        return launch.out
    num_cols = weights.out_features
    _packed_int_matmul_kernel[launch.grid](
        x,
        weights.qweight,
        weights.qzeros,
        weights.scales,
        weights.g_idx,
        launch.target,
        x.shape[0],
        num_cols,
        weights.in_features,
        x.stride(0),
        weights.qweight.stride(0),
        weights.qzeros.stride(0),
        weights.scales.stride(0),
        num_cols,  # row stride of out and of each partial slice (both contiguous)
        weights.zero_offset,
        launch.split.k_per_split,
        BITS=weights.bits,
        AWQ_LAYOUT=weights.layout == "awq",
        GROUP_SIZE=sequential_group_size(weights, tiles.block_k),
        SPLIT_K=launch.split.splits,
        BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.block_n,
        BLOCK_K=tiles.block_k,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=tiles.num_warps,
    )
    return launch.finish()


def _check_args(x: torch.Tensor, weights: PackedIntWeights) -> None:
    if x.dim() != 2 or x.shape[1] != weights.in_features:
        raise ValueError(f"x {tuple(x.shape)} is not [M, {weights.in_features}]")
    if x.stride(1) != 1:
        raise ValueError("x rows must be contiguous")
    pack = pack_factor(weights.bits)
    if weights.layout == "awq" and weights.bits != 4:
        raise ValueError("the AWQ layout is 4-bit only")
    for name in ("qweight", "qzeros", "scales"):
        if getattr(weights, name).stride(1) != 1:
            raise ValueError(f"{name} rows must be contiguous")
    if weights.out_features % pack != 0:
        raise ValueError(f"{weights.out_features} output features are not a multiple of {pack}")
