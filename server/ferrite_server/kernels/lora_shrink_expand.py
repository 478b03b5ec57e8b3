"""Batched LoRA on CUDA as two gather kernels (layers/lora.py has the math and the torch paths).

    shrink:  s[t, :]  = A[a_t] @ x[t]                 A [N, parts * R, in]   s float32
    expand:  y[t, o] += B[a_t, o, :] . s[t, c_o : c_o + R]   B [N, out, R] (scale folded in)

a_t is token t's adapter (-1: none; the token's programs exit at once) and c_o the shrink
column where output row o's fused part starts, so one expand launch serves every part of a
qkv or gate_up layer. Each program handles one token and a tile of output features: a token
reads its adapter's weights itself, with no sorting by adapter and nothing read from the host,
so the launches are the same for every batch of a size and a CUDA graph replays them. Decode
batches are small, so these matrix-vector products are bound by reading A and B, which the
tokens of one adapter share through the L2 cache.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _lora_shrink_kernel(
    x_ptr,  # [T, in]
    a_ptr,  # [N, rows, in]
    adapters_ptr,  # [T] int32
    s_ptr,  # [T, rows] float32
    input_size,
    num_rows,
    stride_x_token,
    stride_a_adapter,
    stride_a_row,
    stride_s_token,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    adapter = tl.load(adapters_ptr + token).to(tl.int64)
    if adapter < 0:
        return
    rows = tl.program_id(1) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = rows < num_rows
    acc = tl.zeros((BLOCK_ROWS,), dtype=tl.float32)
    for k_start in range(0, input_size, BLOCK_K):
        ks = k_start + tl.arange(0, BLOCK_K)
        k_mask = ks < input_size
        x = tl.load(x_ptr + token * stride_x_token + ks, mask=k_mask, other=0.0).to(tl.float32)
        a_offsets = adapter * stride_a_adapter + rows[:, None] * stride_a_row + ks[None, :]
        a = tl.load(a_ptr + a_offsets, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        acc += tl.sum(a.to(tl.float32) * x[None, :], axis=1)
    tl.store(s_ptr + token * stride_s_token + rows, acc, mask=row_mask)


@triton.jit
def _lora_expand_kernel(
    s_ptr,  # [T, parts * R] float32
    b_ptr,  # [N, out, R]
    row_offsets_ptr,  # [out] int32: shrink column of each output row's part
    adapters_ptr,  # [T] int32
    y_ptr,  # [T, out], updated in place
    output_size,
    rank,
    stride_s_token,
    stride_b_adapter,
    stride_b_row,
    stride_y_token,
    BLOCK_OUT: tl.constexpr,
    BLOCK_RANK: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    adapter = tl.load(adapters_ptr + token).to(tl.int64)
    if adapter < 0:
        return
    outs = tl.program_id(1) * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
    out_mask = outs < output_size
    ranks = tl.arange(0, BLOCK_RANK)
    mask = out_mask[:, None] & (ranks[None, :] < rank)
    columns = tl.load(row_offsets_ptr + outs, mask=out_mask, other=0)
    s_offsets = token * stride_s_token + columns[:, None] + ranks[None, :]
    s = tl.load(s_ptr + s_offsets, mask=mask, other=0.0)
    b_offsets = adapter * stride_b_adapter + outs[:, None] * stride_b_row + ranks[None, :]
    b = tl.load(b_ptr + b_offsets, mask=mask, other=0.0)
    delta = tl.sum(b.to(tl.float32) * s, axis=1)
    y_offsets = y_ptr + token * stride_y_token + outs
    y = tl.load(y_offsets, mask=out_mask, other=0.0)
    tl.store(y_offsets, (y.to(tl.float32) + delta).to(y_ptr.dtype.element_ty), mask=out_mask)


def lora_shrink_expand(
    y: torch.Tensor,  # [T, out], updated in place
    x: torch.Tensor,  # [T, in]
    lora_a: torch.Tensor,  # [N, parts * R, in]
    lora_b: torch.Tensor,  # [N, out, R]
    row_shrink_offsets: torch.Tensor,  # [out] int32
    token_adapters: torch.Tensor,  # [T] int32, -1: none
    block_out: int = 64,
    block_k: int = 64,
) -> torch.Tensor:
    """y += each token's LoRA delta; returns y."""
    num_tokens, input_size = x.shape
    num_rows, rank, output_size = lora_a.shape[1], lora_b.shape[2], lora_b.shape[1]
    if y.shape != (num_tokens, output_size) or lora_a.shape[2] != input_size:
        raise ValueError(
            f"y {tuple(y.shape)}, x {tuple(x.shape)}, A {tuple(lora_a.shape)} and B "
            f"{tuple(lora_b.shape)} do not fit together"
        )
    for name, tensor in (("x", x), ("y", y), ("A", lora_a), ("B", lora_b)):
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous along its last dimension")
    if num_tokens == 0:
        return y
    shrunk = torch.empty(num_tokens, num_rows, dtype=torch.float32, device=x.device)
    block_rows = triton.next_power_of_2(min(num_rows, 64))
    _lora_shrink_kernel[(num_tokens, triton.cdiv(num_rows, block_rows))](
        x, lora_a, token_adapters, shrunk,
        input_size, num_rows,
        x.stride(0), lora_a.stride(0), lora_a.stride(1), shrunk.stride(0),
        BLOCK_ROWS=block_rows, BLOCK_K=block_k,
    )
    _lora_expand_kernel[(num_tokens, triton.cdiv(output_size, block_out))](
        shrunk, lora_b, row_shrink_offsets, token_adapters, y,
        output_size, rank,
        shrunk.stride(0), lora_b.stride(0), lora_b.stride(1), y.stride(0),
        BLOCK_OUT=block_out, BLOCK_RANK=triton.next_power_of_2(rank),
    )
    return y
