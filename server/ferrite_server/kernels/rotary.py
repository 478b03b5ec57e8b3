"""Rotary embedding of query and key in place, both in one launch ("rotate half" layout).

The torch expression in layers/rotary.py takes ~6 elementwise kernels per tensor per layer
(chunk, negate, concatenate, two multiplies, an add); at batch-1 decode those launches, not the
bytes, are the cost. One program rotates every head of one token's query and key, reading the
step's shared cos / sin row once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate_heads(
    base_ptr,  # one token's [num_heads, head_dim] rows (head_dim contiguous)
    stride_head,
    cos_half,  # [1, BLOCK_HALF] float32
    sin_half,  # [1, BLOCK_HALF] float32
    num_heads,
    half_dim,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (heads < num_heads) & (dims < half_dim)  # [BLOCK_H, BLOCK_HALF]
    first_ptrs = base_ptr + heads * stride_head + dims
    first = tl.load(first_ptrs, mask=mask, other=0.0).to(tl.float32)
    second = tl.load(first_ptrs + half_dim, mask=mask, other=0.0).to(tl.float32)
    # [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin]  (x * cos + rotate_half(x) * sin)
    rotated_first = first * cos_half - second * sin_half
    rotated_second = second * cos_half + first * sin_half
    tl.store(first_ptrs, rotated_first.to(base_ptr.dtype.element_ty), mask=mask)
    tl.store(first_ptrs + half_dim, rotated_second.to(base_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(
    query_ptr,  # [T, num_heads, head_dim]
    key_ptr,  # [T, num_kv_heads, head_dim]
    cos_ptr,  # [T, head_dim]  (both halves equal)
    sin_ptr,  # [T, head_dim]
    stride_query_token,
    stride_query_head,
    stride_key_token,
    stride_key_head,
    stride_cos_token,
    num_heads,
    num_kv_heads,
    half_dim,
    BLOCK_H: tl.constexpr,
    BLOCK_KV_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    dims = tl.arange(0, BLOCK_HALF)[None, :]
    dim_mask = dims < half_dim
    cos_half = tl.load(cos_ptr + token * stride_cos_token + dims, mask=dim_mask, other=0.0).to(tl.float32)
    sin_half = tl.load(sin_ptr + token * stride_cos_token + dims, mask=dim_mask, other=0.0).to(tl.float32)
    _rotate_heads(
        query_ptr + token * stride_query_token, stride_query_head, cos_half, sin_half,
        num_heads, half_dim, BLOCK_H, BLOCK_HALF,
    )
    _rotate_heads(
        key_ptr + token * stride_key_token, stride_key_head, cos_half, sin_half,
        num_kv_heads, half_dim, BLOCK_KV_H, BLOCK_HALF,
    )


def _check_args(
    query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> None:
    if query.dim() != 3 or key.dim() != 3 or query.shape[0] != key.shape[0]:
        raise ValueError(f"query {tuple(query.shape)} / key {tuple(key.shape)} must be [T, heads, head_dim]")
    head_dim = query.shape[2]
    if key.shape[2] != head_dim or head_dim % 2:
        raise ValueError(f"query and key need one even head_dim, got {head_dim} / {key.shape[2]}")
    if cos.shape != (query.shape[0], head_dim) or sin.shape != cos.shape or cos.stride() != sin.stride():
        raise ValueError(f"cos / sin must both be [T, head_dim] = [{query.shape[0]}, {head_dim}]")
    if query.stride(2) != 1 or key.stride(2) != 1 or cos.stride(1) != 1:
        raise ValueError("head_dim must be contiguous in query, key, cos and sin")


def rotate_query_key_(
    query: torch.Tensor,  # [T, num_heads, head_dim], rotated in place
    key: torch.Tensor,  # [T, num_kv_heads, head_dim], rotated in place
    cos: torch.Tensor,  # [T, head_dim]
    sin: torch.Tensor,  # [T, head_dim]
) -> None:
    """Apply RoPE to query and key in place. They may be strided views of a fused QKV output."""
    _check_args(query, key, cos, sin)
    num_tokens, num_heads, head_dim = query.shape
    if num_tokens == 0:
        return
    num_kv_heads = key.shape[1]
    block_h = triton.next_power_of_2(num_heads)
    block_half = triton.next_power_of_2(head_dim // 2)
    _rotary_kernel[(num_tokens,)](
        query,
        key,
        cos,
        sin,
        query.stride(0),
        query.stride(1),
        key.stride(0),
        key.stride(1),
        cos.stride(0),
        num_heads,
        num_kv_heads,
        head_dim // 2,
        BLOCK_H=block_h,
        BLOCK_KV_H=triton.next_power_of_2(num_kv_heads),
        BLOCK_HALF=block_half,
        num_warps=max(1, min(8, block_h * block_half // 256)),
    )
