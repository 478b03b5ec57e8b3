"""Variable-length causal attention over paged K/V: prefill, chunked prefill, prefix reuse.

All sequences of a step run in one launch. Sequence s has q_len new tokens, which are the last
q_len of its seq_len context, so new token i sits at position seq_len - q_len + i and sees
positions 0 ..= that one (whatever part of them was cached by earlier steps).

Work split: a program takes BLOCK_Q consecutive new tokens of one sequence together with all
query heads that share one KV head (GQA packing: its BLOCK_M = BLOCK_Q * GROUP_PAD rows are
(token, head) pairs), so each K/V tile it loads serves every head of the group, and a mixed
batch's decode rows still share their K/V reads. Tiles are numbered across the whole batch without a
host round trip: sequence s owns tile ids starting at query_start_loc[s] // BLOCK_Q + s (always
enough ids for its tiles), a program finds its sequence by binary search, and ids past the end
of a sequence's tiles do nothing. The grid therefore depends only on T and S.

The K/V loop runs in two phases: tiles every row of the program may see (no mask needed), then
the few tiles that cross the diagonal, masked per row. With a sliding window W (row at position
p sees p - W < j <= p) one masked loop runs from the first row's window start instead, and a
row that has seen no key yet is kept at zero weight (its running max is still -inf).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ferrite_server.kernels.attention_inputs import LOG2_E, PagedAttentionInputs
from ferrite_server.kernels.paged_decode_attention import softcap_scores


@triton.jit
def _find_sequence(query_start_loc_ptr, tile, num_seqs, BLOCK_Q: tl.constexpr):
    """Largest s with query_start_loc[s] // BLOCK_Q + s <= tile (a non-decreasing key in s)."""
    lo = tile * 0  # a tensor from the start: the loop carries it
    hi = lo + num_seqs - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        key = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        lo = tl.where(key <= tile, mid, lo)
        hi = tl.where(key <= tile, hi, mid - 1)
    return lo


@triton.jit
def _attend_tile(
    q,  # [BLOCK_M, BLOCK_D]
    acc,  # [BLOCK_M, BLOCK_D] fp32
    m_i,  # [BLOCK_M] fp32 running max (log2 units)
    l_i,  # [BLOCK_M] fp32 running sum
    key_cache_ptr,
    value_cache_ptr,
    block_table_row,  # pointer to this sequence's block table row
    kv_head_offset,  # kv_head * stride_cache_head
    q_positions,  # [BLOCK_M] context position of each row's token
    tile_start,
    kv_end,
    scale_log2,
    stride_cache_block,
    stride_cache_offset,
    window_tokens,  # W > 0 when WINDOWED
    softcap_log2,  # used when HAS_SOFTCAP
    block_size: tl.constexpr,
    head_dim: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL_MASK: tl.constexpr,
    WINDOWED: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    dims = tl.arange(0, BLOCK_D)
    positions = tile_start + tl.arange(0, BLOCK_N)
    valid = positions < kv_end
    # Tiles before the diagonal lie wholly inside the context: their loads need no mask.
    if CAUSAL_MASK:
        blocks = tl.load(block_table_row + positions // block_size, mask=valid, other=0)
    else:
        blocks = tl.load(block_table_row + positions // block_size)
    rows = (
        blocks.to(tl.int64) * stride_cache_block
        + (positions % block_size) * stride_cache_offset
        + kv_head_offset
    )  # [BLOCK_N]
    kv_offsets = rows[:, None] + dims[None, :]  # [BLOCK_N, BLOCK_D]
    kv_mask = valid[:, None] & (dims < head_dim)[None, :]
    if CAUSAL_MASK or BLOCK_D != head_dim:
        k = tl.load(key_cache_ptr + kv_offsets, mask=kv_mask, other=0.0)
    else:
        k = tl.load(key_cache_ptr + kv_offsets)
    k = k.to(q.dtype)  # fp8 cache: widen (its scale is in scale_log2)
    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
    if HAS_SOFTCAP:
        scores = softcap_scores(scores, softcap_log2)
    if CAUSAL_MASK:
        visible = (positions[None, :] <= q_positions[:, None]) & valid[None, :]
        if WINDOWED:
            visible &= positions[None, :] > q_positions[:, None] - window_tokens
        scores = tl.where(visible, scores, float("-inf"))  # [BLOCK_M, BLOCK_N]
    m_new = tl.maximum(m_i, tl.max(scores, axis=1))
    if WINDOWED:  # a row with no visible key so far: weights 0, not exp2(-inf + inf)
        m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(scores - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if CAUSAL_MASK or BLOCK_D != head_dim:
        v = tl.load(value_cache_ptr + kv_offsets, mask=kv_mask, other=0.0)
    else:
        v = tl.load(value_cache_ptr + kv_offsets)
    v = v.to(q.dtype)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def _varlen_attention_kernel(
    out_ptr,  # [T, H, D]
    query_ptr,  # [T, H, D]
    key_cache_ptr,  # [num_blocks, block_size, Hkv, D]
    value_cache_ptr,
    block_tables_ptr,  # [S, max_blocks] int32
    seq_lens_ptr,  # [S] int32
    query_start_loc_ptr,  # [S + 1] int32
    num_seqs,
    scale_log2,  # softmax scale * k_scale * log2(e)
    v_scale,  # fp8 cache: V's dequantization scale (1.0 otherwise)
    window_tokens,  # sliding window W (0: none)
    softcap_log2,  # logit soft-cap in log2 units (used when HAS_SOFTCAP)
    stride_q_token,
    stride_q_head,
    stride_out_token,
    stride_out_head,
    stride_cache_block,
    stride_cache_offset,
    stride_cache_head,
    stride_block_table,
    block_size: tl.constexpr,
    head_dim: tl.constexpr,
    QUERIES_PER_KV: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    WINDOWED: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = _find_sequence(query_start_loc_ptr, tile, num_seqs, BLOCK_Q)
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + seq)
    first_token = (tile - (q_start // BLOCK_Q + seq)) * BLOCK_Q  # index among the new tokens
    context_start = seq_len - q_len  # position of the first new token

    BLOCK_M: tl.constexpr = BLOCK_Q * GROUP_PAD
    rows = tl.arange(0, BLOCK_M)
    token_index = first_token + rows // GROUP_PAD
    head_in_group = rows % GROUP_PAD
    heads = kv_head * QUERIES_PER_KV + head_in_group
    row_valid = (token_index < q_len) & (head_in_group < QUERIES_PER_KV)
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < head_dim
    token_rows = (q_start + token_index).to(tl.int64)
    q_offsets = (
        token_rows[:, None] * stride_q_token + heads[:, None] * stride_q_head + dims[None, :]
    )  # [BLOCK_M, BLOCK_D]
    q = tl.load(query_ptr + q_offsets, mask=row_valid[:, None] & dim_mask[None, :], other=0.0)
    q_positions = context_start + token_index  # [BLOCK_M]

    # Keys up to the tile's last new token; those before unmasked_end every row sees.
    last_token = tl.minimum(first_token + BLOCK_Q, q_len)
    kv_end = tl.where(first_token < q_len, context_start + last_token, 0)
    unmasked_end = tl.where(first_token < q_len, context_start + first_token + 1, 0)
    unmasked_end = (unmasked_end // BLOCK_N) * BLOCK_N

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    block_table_row = block_tables_ptr + seq.to(tl.int64) * stride_block_table
    kv_head_offset = kv_head * stride_cache_head
    if WINDOWED:
        # The program's first row sees the earliest keys: from its window start on, masked.
        first_visible = tl.maximum(context_start + first_token - window_tokens + 1, 0)
        masked_start = (first_visible // BLOCK_N) * BLOCK_N
        unmasked_end = masked_start
    else:
        masked_start = 0
    for tile_start in range(masked_start, unmasked_end, BLOCK_N):
        acc, m_i, l_i = _attend_tile(
            q, acc, m_i, l_i, key_cache_ptr, value_cache_ptr, block_table_row, kv_head_offset,
            q_positions, tile_start, kv_end, scale_log2, stride_cache_block, stride_cache_offset,
            window_tokens, softcap_log2, block_size, head_dim, BLOCK_D, BLOCK_N, False, False,
            HAS_SOFTCAP, DOT_PRECISION,
        )
    for tile_start in range(unmasked_end, kv_end, BLOCK_N):
        acc, m_i, l_i = _attend_tile(
            q, acc, m_i, l_i, key_cache_ptr, value_cache_ptr, block_table_row, kv_head_offset,
            q_positions, tile_start, kv_end, scale_log2, stride_cache_block, stride_cache_offset,
            window_tokens, softcap_log2, block_size, head_dim, BLOCK_D, BLOCK_N, True, WINDOWED,
            HAS_SOFTCAP, DOT_PRECISION,
        )

    result = acc * (v_scale / tl.maximum(l_i, 1e-30))[:, None]
    out_offsets = (
        token_rows[:, None] * stride_out_token + heads[:, None] * stride_out_head + dims[None, :]
    )
    out_mask = row_valid[:, None] & dim_mask[None, :]
    tl.store(out_ptr + out_offsets, result.to(out_ptr.dtype.element_ty), mask=out_mask)


@dataclass(frozen=True)
class VarlenTiles:
    """Launch shape of the varlen kernel (defaults tuned for Hopper, see bench/GPU_NOTES.md).

    The same on CPU (interpreter) and GPU, so the tests run the configuration the GPU runs.
    """

    program_rows: int = 128  # (token, head) rows per program: BLOCK_Q * GROUP_PAD
    block_n: int = 32  # K/V tokens per inner-loop tile
    num_warps: int = 4
    num_stages: int = 3


def varlen_prefill_attention(
    inputs: PagedAttentionInputs, out: torch.Tensor, tiles: VarlenTiles = VarlenTiles()
) -> torch.Tensor:
    """Causal attention of every new token over its sequence's paged context; writes out.

    out: [T, num_heads, head_dim], same dtype as query. Returns out.
    """
    inputs.validate()
    query, key_cache, metadata = inputs.query, inputs.key_cache, inputs.metadata
    num_tokens, num_seqs = query.shape[0], metadata.num_seqs
    if num_tokens == 0 or num_seqs == 0:
        return out
    group_pad = triton.next_power_of_2(inputs.queries_per_kv)
    block_q = max(1, tiles.program_rows // group_pad)
    num_tiles = num_tokens // block_q + num_seqs  # see module docstring: tile ids per sequence
    _varlen_attention_kernel[(num_tiles, inputs.num_kv_heads)](
        out,
        query,
        key_cache,
        inputs.value_cache,
        metadata.block_tables,
        metadata.seq_lens,
        metadata.query_start_loc,
        num_seqs,
        inputs.scale * inputs.k_scale * LOG2_E,
        inputs.v_scale,
        inputs.window_tokens,
        inputs.softcap_log2,
        query.stride(0),
        query.stride(1),
        out.stride(0),
        out.stride(1),
        key_cache.stride(0),
        key_cache.stride(1),
        key_cache.stride(2),
        metadata.block_tables.stride(0),
        block_size=inputs.block_size,
        head_dim=inputs.head_dim,
        QUERIES_PER_KV=inputs.queries_per_kv,
        GROUP_PAD=group_pad,
        BLOCK_Q=block_q,
        BLOCK_D=triton.next_power_of_2(inputs.head_dim),
        BLOCK_N=tiles.block_n,
        WINDOWED=inputs.window_tokens > 0,
        HAS_SOFTCAP=inputs.softcap_log2 > 0,
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
    )
    return out
