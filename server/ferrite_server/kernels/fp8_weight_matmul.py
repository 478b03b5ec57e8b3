"""FP8 weight-only matmul for few rows (decode): y = (x @ W8^T) * channel_scales.

Decode multiplies a handful of activation rows by every weight, so it is bound by reading the
weights; FP8 weights halve those bytes against bf16. torch._scaled_mm's rowwise path first
quantizes the activations per token and is tuned for large M: on an H100 an 8B FP8 decode step
ran 0.86x the speed of bf16 with it (bench/RESULTS.md). This kernel instead streams the e4m3
weight tile, widens it to the activations' dtype in registers and multiplies on the tensor
cores; the per-output-channel scale is applied once at the end. K is split over programs
(split-K) when the output has too few tiles to fill the GPU; each split writes its own fp32
partial sums and one sum adds them (deterministic, no atomics).

Weight layout: [N, K] e4m3, K contiguous (nn.Linear's). Widening e4m3 needs compute capability
8.9+ (the callers check), or Triton's interpreter on CPU tensors (tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ferrite_server.kernels.split_k import MatmulLaunch, MatmulTiles, store_tile


@triton.jit
def _fp8_weight_matmul_kernel(
    x_ptr,  # [M, K]
    w_ptr,  # [N, K] float8_e4m3fn
    scale_ptr,  # [N] float32
    out_ptr,  # [M, N]; with SPLIT_K > 1: fp32 [SPLIT_K, M, N] partial sums
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_om,
    k_per_split,  # a multiple of BLOCK_K
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < M
    col_mask = cols < N
    k_begin = tl.program_id(2) * k_per_split
    k_end = tl.minimum(K, k_begin + k_per_split)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k_start in range(k_begin, k_end, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)
        k_mask = ks < k_end
        x = tl.load(
            x_ptr + rows[:, None].to(tl.int64) * stride_xm + ks[None, :],
            mask=row_mask[:, None] & k_mask[None, :],
            other=0.0,
        )  # [BLOCK_M, BLOCK_K]
        w = tl.load(
            w_ptr + cols[None, :].to(tl.int64) * stride_wn + ks[:, None],
            mask=k_mask[:, None] & col_mask[None, :],
            other=0.0,
        )  # [BLOCK_K, BLOCK_N] e4m3
        acc += tl.dot(x, w.to(x.dtype), input_precision=DOT_PRECISION)
    scales = tl.load(scale_ptr + cols, mask=col_mask, other=0.0)
    acc = acc * scales[None, :]
    store_tile(out_ptr, acc, rows, cols, M, N, stride_om, SPLIT_K)


@dataclass(frozen=True)
class Fp8MatmulTiles(MatmulTiles):
    block_k: int = 128


def fp8_weight_matmul(
    x: torch.Tensor,  # [M, K] bf16 / fp16 / fp32, rows contiguous
    weight: torch.Tensor,  # [N, K] float8_e4m3fn, rows contiguous
    channel_scales: torch.Tensor,  # [N] float32
    tiles: Fp8MatmulTiles = Fp8MatmulTiles(),
) -> torch.Tensor:  # [M, N] in x's dtype
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"x {tuple(x.shape)} does not match weight {tuple(weight.shape)}")
    if x.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError("x and weight rows must be contiguous")
    launch = MatmulLaunch.plan(x, weight.shape[0], tiles)
    if launch.empty:
        return launch.out
    num_rows, num_inputs = x.shape
    num_cols = weight.shape[0]
    _fp8_weight_matmul_kernel[launch.grid](
        x,
        weight,
        channel_scales,
        launch.target,
        num_rows,
        num_cols,
        num_inputs,
        x.stride(0),
        weight.stride(0),
        num_cols,  # row stride of out and of each partial slice (both contiguous)
        launch.split.k_per_split,
        BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.block_n,
        BLOCK_K=tiles.block_k,
        SPLIT_K=launch.split.splits,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=tiles.num_warps,
    )
    return launch.finish()
