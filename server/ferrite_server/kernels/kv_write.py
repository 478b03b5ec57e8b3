"""KV write: scatter one step's new K/V rows into the paged cache at their slots.

One program copies one token's [num_kv_heads, head_dim] rows of both K and V, so the launch is a
single pass over the step's new K/V whatever the batch looks like. A slot below
zero marks a padding token (CUDA-graph padding, for example) whose row must not be written.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _kv_write_kernel(
    key_ptr,  # [T, num_kv_heads, head_dim]
    value_ptr,  # [T, num_kv_heads, head_dim]
    key_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache_ptr,  # [num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping_ptr,  # [T] int64
    stride_key_token,
    stride_key_head,
    stride_value_token,
    stride_value_head,
    stride_cache_block,
    stride_cache_offset,
    stride_cache_head,
    block_size: tl.constexpr,
    num_kv_heads: tl.constexpr,
    head_dim: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    heads = tl.arange(0, BLOCK_H)
    dims = tl.arange(0, BLOCK_D)
    # A negative slot is padding: every lane is masked off, nothing is read or written.
    # (The slot test is made per lane: Triton's interpreter rejects a scalar bool in a mask.)
    mask = (heads < num_kv_heads)[:, None] & (dims < head_dim)[None, :]
    mask = mask & ((heads * 0 + slot) >= 0)[:, None]  # [BLOCK_H, BLOCK_D]
    safe_slot = tl.maximum(slot, 0)
    block = safe_slot // block_size
    offset = safe_slot % block_size

    key_offsets = token * stride_key_token + heads[:, None] * stride_key_head + dims[None, :]
    value_offsets = token * stride_value_token + heads[:, None] * stride_value_head + dims[None, :]
    key_rows = tl.load(key_ptr + key_offsets, mask=mask)
    value_rows = tl.load(value_ptr + value_offsets, mask=mask)
    cache_offsets = (
        block * stride_cache_block
        + offset * stride_cache_offset
        + heads[:, None] * stride_cache_head
        + dims[None, :]
    )
    tl.store(key_cache_ptr + cache_offsets, key_rows.to(key_cache_ptr.dtype.element_ty), mask=mask)
    value_rows = value_rows.to(value_cache_ptr.dtype.element_ty)
    tl.store(value_cache_ptr + cache_offsets, value_rows, mask=mask)


def write_kv(
    key: torch.Tensor,  # [T, num_kv_heads, head_dim]
    value: torch.Tensor,  # [T, num_kv_heads, head_dim]
    key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
    slot_mapping: torch.Tensor,  # [T] int64; < 0 means "skip this token"
) -> None:
    """Write key[t] / value[t] into the caches at slot_mapping[t] (slot = block * size + offset).

    One program per token moves all of its heads (a contiguous row of the cache slot). K and V
    may be strided views (e.g. slices of a fused QKV projection) as long as head_dim is
    contiguous; both caches must share one layout.
    """
    num_tokens, num_kv_heads, head_dim = key.shape
    if num_tokens == 0:
        return
    _check_write_args(key, value, key_cache, value_cache, slot_mapping)
    block_h, block_d = triton.next_power_of_2(num_kv_heads), triton.next_power_of_2(head_dim)
    _kv_write_kernel[(num_tokens,)](
        key,
        value,
        key_cache,
        value_cache,
        slot_mapping,
        key.stride(0),
        key.stride(1),
        value.stride(0),
        value.stride(1),
        key_cache.stride(0),
        key_cache.stride(1),
        key_cache.stride(2),
        block_size=key_cache.shape[1],
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        BLOCK_H=block_h,
        BLOCK_D=block_d,
        num_warps=max(1, min(8, block_h * block_d // 256)),
    )


def _check_write_args(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    if key.shape != value.shape or key.dim() != 3:
        shapes = f"key {tuple(key.shape)}, value {tuple(value.shape)}"
        raise ValueError(f"{shapes}: must be equal and [T, H, D]")
    if key_cache.shape != value_cache.shape or key_cache.stride() != value_cache.stride():
        raise ValueError("key_cache and value_cache must share one shape and layout")
    if key_cache.shape[2:] != key.shape[1:]:
        raise ValueError(
            f"cache heads/dim {tuple(key_cache.shape[2:])} != new K/V {tuple(key.shape[1:])}"
        )
    if key.stride(2) != 1 or value.stride(2) != 1 or key_cache.stride(3) != 1:
        raise ValueError("head_dim must be contiguous in K, V and the caches")
    if slot_mapping.shape != (key.shape[0],):
        raise ValueError(f"slot_mapping {tuple(slot_mapping.shape)} != [{key.shape[0]}]")
