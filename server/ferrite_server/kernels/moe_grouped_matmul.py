"""Grouped expert matmul for mixture-of-experts layers (CUDA): every expert's rows in one launch.

The torch path of layers/moe.py loops over the experts any token picked, one small matmul each
(and a host sync to learn which ones). Here the T * k (token, slot) pairs are sorted by expert
and each expert's run is padded to a multiple of BLOCK_M, so one program tile never mixes two
experts: a program reads its tile's expert id, gathers its rows of the input and multiplies them
by that expert's weight. Two launches make the layer:

    gate_up[p] = x[p // k] @ w13[e(p)]^T             p = t * k + slot, [T * k, 2 * I]
    down[p]    = (act(gate_up) [p] @ w2[e(p)]^T) * routing_weight[p]     [T * k, H]
    out[t]     = sum over slots of down[t * k + slot]

The alignment runs on the device without a host sync (its size is the worst case T * k plus
E * (BLOCK_M - 1) padding rows), so the layer can be captured in a CUDA graph. Weights may be
float (the activations' dtype) or e4m3 with one float32 scale per expert output channel
(`--quantize fp8`): the tile is widened in registers and the scale applied once at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@triton.jit
def _grouped_matmul_kernel(
    x_ptr,  # [num_inputs, K]
    w_ptr,  # [E, N, K] (float, or e4m3 with scales)
    scale_ptr,  # [E, N] float32 (read only when HAS_SCALES)
    row_weight_ptr,  # [num_rows] float32 (read only when HAS_ROW_WEIGHTS)
    sorted_rows_ptr,  # [padded] int32: pair index p, or num_rows for a padding row
    tile_experts_ptr,  # [padded / BLOCK_M] int32
    out_ptr,  # [num_rows, N]
    num_rows,
    N,
    K,
    rows_per_input,  # k for gate_up (p reads input p // k), 1 for down
    stride_xm,
    stride_we,
    stride_wn,
    stride_om,
    HAS_SCALES: tl.constexpr,
    HAS_ROW_WEIGHTS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    # An expert's run starts on a tile boundary with its real rows first, so a tile whose first
    # row is padding holds no real row (the worst-case size leaves such tiles at the end).
    if tl.load(sorted_rows_ptr + tile * BLOCK_M) >= num_rows:
        return
    rows = tl.load(sorted_rows_ptr + tile * BLOCK_M + tl.arange(0, BLOCK_M))  # [BLOCK_M]
    row_mask = rows < num_rows
    expert = tl.load(tile_experts_ptr + tile).to(tl.int64)
    inputs = (rows // rows_per_input).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    w_base = w_ptr + expert * stride_we
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k_start in range(0, K, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        x = tl.load(
            x_ptr + inputs[:, None] * stride_xm + ks[None, :],
            mask=row_mask[:, None] & k_mask[None, :],
            other=0.0,
        )  # [BLOCK_M, BLOCK_K]
        w = tl.load(
            w_base + cols[None, :].to(tl.int64) * stride_wn + ks[:, None],
            mask=k_mask[:, None] & col_mask[None, :],
            other=0.0,
        )  # [BLOCK_K, BLOCK_N]
        acc += tl.dot(x, w.to(x.dtype), input_precision=DOT_PRECISION)
    if HAS_SCALES:
        scales = tl.load(scale_ptr + expert * N + cols, mask=col_mask, other=0.0)
        acc = acc * scales[None, :]
    if HAS_ROW_WEIGHTS:
        acc = acc * tl.load(row_weight_ptr + rows, mask=row_mask, other=0.0)[:, None]
    tl.store(
        out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=row_mask[:, None] & col_mask[None, :],
    )


@dataclass(frozen=True)
class GroupedTiles:
    block_m: int = 16
    block_n: int = 64
    block_k: int = 64
    num_warps: int = 4


@dataclass(frozen=True)
class ExpertAlignment:
    """The (token, slot) pairs sorted by expert, each expert's run padded to block_m rows."""

    sorted_rows: torch.Tensor  # [padded] int32; num_rows marks a padding row
    tile_experts: torch.Tensor  # [padded / block_m] int32
    num_rows: int  # T * k

    @classmethod
    def of(cls, experts: torch.Tensor, num_experts: int, block_m: int) -> ExpertAlignment:
        """`experts` [T, k] int64: each token's chosen experts."""
        flat = experts.flatten()  # [T * k]
        num_rows = flat.numel()
        order = torch.argsort(flat, stable=True)  # pairs grouped by expert, ascending
        # scatter_add, not bincount: bincount on CUDA reads the largest id back to the host.
        counts = torch.zeros(num_experts, dtype=torch.int64, device=flat.device)
        counts.scatter_add_(0, flat, torch.ones_like(flat))  # [E]
        padded_counts = (counts + block_m - 1) // block_m * block_m
        starts = torch.cumsum(counts, 0) - counts  # [E] first sorted index of each expert
        padded_starts = torch.cumsum(padded_counts, 0) - padded_counts
        sorted_experts = flat[order]
        rank_in_expert = torch.arange(num_rows, device=flat.device) - starts[sorted_experts]
        padded_size = num_rows + num_experts * (block_m - 1)
        padded_size = -(-padded_size // block_m) * block_m
        sorted_rows = torch.full((padded_size,), num_rows, dtype=torch.int32, device=flat.device)
        sorted_rows[padded_starts[sorted_experts] + rank_in_expert] = order.to(torch.int32)
        tile_starts = torch.arange(0, padded_size, block_m, device=flat.device)
        padded_ends = torch.cumsum(padded_counts, 0)
        # Tile i belongs to the expert whose padded run contains its first row; tiles past
        # the last run are all padding (the kernel skips them), any valid expert id will do.
        tile_experts = torch.searchsorted(padded_ends, tile_starts, right=True)
        tile_experts = tile_experts.clamp(max=num_experts - 1).to(torch.int32)
        return cls(sorted_rows, tile_experts, num_rows)


def grouped_expert_matmul(
    x: torch.Tensor,  # [num_inputs, K], rows contiguous
    weight: torch.Tensor,  # [E, N, K], K contiguous
    alignment: ExpertAlignment,
    rows_per_input: int,
    channel_scales: torch.Tensor | None = None,  # [E, N] float32 when weight is e4m3
    row_weights: torch.Tensor | None = None,  # [num_rows] float32
    tiles: GroupedTiles = GroupedTiles(),
) -> torch.Tensor:  # [num_rows, N] in x's dtype
    """out[p] = (x[p // rows_per_input] @ weight[expert of p]^T) * scales * row_weights[p]."""
    if x.dim() != 2 or weight.dim() != 3 or x.shape[1] != weight.shape[2]:
        raise ValueError(f"x {tuple(x.shape)} does not match experts {tuple(weight.shape)}")
    if x.stride(1) != 1 or weight.stride(2) != 1:
        raise ValueError("x rows and expert weight rows must be contiguous")
    num_experts, num_cols, num_inputs = weight.shape
    out = torch.empty(alignment.num_rows, num_cols, dtype=x.dtype, device=x.device)
    if alignment.num_rows == 0:
        return out
    dummy = out  # stands in for the pointers a constexpr flag leaves unread
    grid = (alignment.tile_experts.numel(), triton.cdiv(num_cols, tiles.block_n))
    _grouped_matmul_kernel[grid](
        x,
        weight,
        channel_scales if channel_scales is not None else dummy,
        row_weights if row_weights is not None else dummy,
        alignment.sorted_rows,
        alignment.tile_experts,
        out,
        alignment.num_rows,
        num_cols,
        num_inputs,
        rows_per_input,
        x.stride(0),
        weight.stride(0),
        weight.stride(1),
        out.stride(0),
        HAS_SCALES=channel_scales is not None,
        HAS_ROW_WEIGHTS=row_weights is not None,
        BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.block_n,
        BLOCK_K=tiles.block_k,
        DOT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=tiles.num_warps,
    )
    return out
