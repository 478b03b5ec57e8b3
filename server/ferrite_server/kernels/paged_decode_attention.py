"""Paged decode attention (one query token per sequence), split over the context.

Decode reads every cached K/V byte once per step and does little arithmetic with it, so it is
bound by memory bandwidth; two things keep the GPU's memory system busy:
- GQA: one program serves all query heads that share a KV head, so each K/V tile is read from
  memory once (the query heads become the rows of a small matrix product).
- Flash-decoding: a sequence's context is cut into partitions handled by separate programs, so
  a small batch with long contexts still fills every SM. Each partition writes its normalised
  partial output and log-sum-exp; a second kernel combines the partitions. When one partition
  covers every context the first kernel writes the final output directly.

Programs whose partition starts past their sequence's end do nothing, so the grid depends only
on host-side sizes (batch, heads, max_seq_len): CUDA graphs can capture it at a maximal length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ferrite_server.kernels.attention_inputs import PagedAttentionInputs
from ferrite_server.kernels.device_info import num_sms

LOG2_E = 1.4426950408889634
# Longest partition: bounds the tail when one sequence is much longer than the others.
MAX_PARTITION_SIZE_TOKENS = 1024
# Shortest partition: below this the reduce and per-program overhead outweigh the parallelism
# (H100, batch 1, 4096 context: 64-128 tokens best, 32 costs 25% more; bench/GPU_NOTES.md).
MIN_PARTITION_SIZE_TOKENS = 128
# Partitions combined per step of the reduce kernel's loop.
REDUCE_BLOCK_PARTITIONS = 16


@triton.jit
def softcap_scores(scores, softcap_log2):
    """cap * tanh(s / cap) in log2 units; tanh(x) = 1 - 2 / (exp(2x) + 1) (exp overflowing to
    inf gives 1, underflowing to 0 gives -1, so no clamp is needed)."""
    return softcap_log2 * (1.0 - 2.0 / (tl.exp(2.0 * scores / softcap_log2) + 1.0))


@triton.jit
def _decode_partition_kernel(
    out_ptr,  # [S, H, D] final output (written only when SINGLE_PARTITION)
    partial_out_ptr,  # [S, H, P, D] fp32 normalised partial outputs
    partial_lse_ptr,  # [S, H, P] fp32 log2-sum-exp2 of each partition's scores
    query_ptr,  # [S, H, D]
    key_cache_ptr,  # [num_blocks, block_size, Hkv, D]
    value_cache_ptr,
    block_tables_ptr,  # [S, max_blocks] int32
    seq_lens_ptr,  # [S] int32
    scale_log2,  # softmax scale * k_scale * log2(e): scores go through exp2
    v_scale,  # fp8 cache: V's dequantization scale (1.0 otherwise)
    window_tokens,  # sliding window W (0: none): keys at seq_len - W .. seq_len - 1
    softcap_log2,  # logit soft-cap in log2 units (used when HAS_SOFTCAP)
    stride_q_token,
    stride_q_head,
    stride_out_token,
    stride_out_head,
    stride_cache_block,
    stride_cache_offset,
    stride_cache_head,
    stride_block_table,
    num_heads,
    partition_size,
    num_partitions,
    block_size: tl.constexpr,
    head_dim: tl.constexpr,
    QUERIES_PER_KV: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SINGLE_PARTITION: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    partition = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    start = partition * partition_size
    end = tl.minimum(start + partition_size, seq_len)
    # Keys before the window are skipped; a partition wholly before it is empty (see below).
    window_start = tl.where(window_tokens > 0, tl.maximum(seq_len - window_tokens, 0), 0)
    first_key = tl.maximum(start, window_start)

    group = tl.arange(0, BLOCK_G)
    dims = tl.arange(0, BLOCK_D)
    heads = kv_head * QUERIES_PER_KV + group
    head_mask = group < QUERIES_PER_KV
    dim_mask = dims < head_dim
    q_offsets = seq * stride_q_token + heads[:, None] * stride_q_head + dims[None, :]
    q = tl.load(query_ptr + q_offsets, mask=head_mask[:, None] & dim_mask[None, :], other=0.0)

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    block_table_row = block_tables_ptr + seq * stride_block_table
    for tile_start in range(first_key, end, BLOCK_N):
        positions = tile_start + tl.arange(0, BLOCK_N)
        valid = positions < end
        blocks = tl.load(block_table_row + positions // block_size, mask=valid, other=0)
        rows = (
            blocks.to(tl.int64) * stride_cache_block
            + (positions % block_size) * stride_cache_offset
            + kv_head * stride_cache_head
        )  # [BLOCK_N] element offset of each token's head row
        kv_mask = valid[:, None] & dim_mask[None, :]
        k = tl.load(key_cache_ptr + rows[:, None] + dims[None, :], mask=kv_mask, other=0.0)
        k = k.to(q.dtype)  # fp8 cache: widen (its scale is in scale_log2)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
        if HAS_SOFTCAP:
            scores = softcap_scores(scores, softcap_log2)
        scores = tl.where(valid[None, :], scores, float("-inf"))  # [BLOCK_G, BLOCK_N]
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        p = tl.exp2(scores - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(value_cache_ptr + rows[:, None] + dims[None, :], mask=kv_mask, other=0.0)
        v = v.to(q.dtype)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    # An empty partition (start >= seq_len, or it ends before the window) stores nothing;
    # the reduce never reads it. (Per lane: Triton's interpreter rejects a scalar bool mask.)
    head_has_tokens = head_mask & ((group * 0 + first_key) < end)  # [BLOCK_G]
    out_rows = acc * (v_scale / tl.maximum(l_i, 1e-30))[:, None]
    store_mask = head_has_tokens[:, None] & dim_mask[None, :]
    if SINGLE_PARTITION:
        out_offsets = seq * stride_out_token + heads[:, None] * stride_out_head + dims[None, :]
        tl.store(out_ptr + out_offsets, out_rows.to(out_ptr.dtype.element_ty), mask=store_mask)
    else:
        # Partial buffers are contiguous [S, H, P] and [S, H, P, D].
        part_index = (seq * num_heads + heads) * num_partitions + partition  # [BLOCK_G]
        lse = m_i + tl.log2(tl.maximum(l_i, 1e-30))
        tl.store(partial_lse_ptr + part_index, lse, mask=head_has_tokens)
        part_offsets = part_index[:, None] * head_dim + dims[None, :]
        tl.store(partial_out_ptr + part_offsets, out_rows, mask=store_mask)


@triton.jit
def _decode_reduce_kernel(
    out_ptr,  # [S, H, D]
    partial_out_ptr,  # [S, H, P, D] fp32
    partial_lse_ptr,  # [S, H, P] fp32
    seq_lens_ptr,  # [S] int32
    window_tokens,  # sliding window W (0: none); partitions before it hold nothing
    stride_out_token,
    stride_out_head,
    partition_size,
    num_partitions,
    head_dim: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    num_heads = tl.num_programs(1)
    seq_len = tl.load(seq_lens_ptr + seq)
    used_partitions = tl.cdiv(seq_len, partition_size)
    window_start = tl.where(window_tokens > 0, tl.maximum(seq_len - window_tokens, 0), 0)
    first_partition = window_start // partition_size
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < head_dim
    base = (seq * num_heads + head) * num_partitions

    # Online log-sum-exp over chunks of partitions (base 2, like the partition kernel).
    m_run = tl.full([1], float("-inf"), dtype=tl.float32)
    weight_sum = tl.zeros([1], dtype=tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for chunk_start in range(first_partition, used_partitions, BLOCK_P):
        parts = chunk_start + tl.arange(0, BLOCK_P)
        part_mask = parts < used_partitions
        lse = tl.load(partial_lse_ptr + base + parts, mask=part_mask, other=float("-inf"))
        m_new = tl.maximum(m_run, tl.max(lse, axis=0))
        rescale = tl.exp2(m_run - m_new)
        weights = tl.where(part_mask, tl.exp2(lse - m_new), 0.0)  # [BLOCK_P]
        part_rows = tl.load(
            partial_out_ptr + (base + parts)[:, None] * head_dim + dims[None, :],
            mask=part_mask[:, None] & dim_mask[None, :],
            other=0.0,
        )
        acc = acc * rescale + tl.sum(weights[:, None] * part_rows, axis=0)
        weight_sum = weight_sum * rescale + tl.sum(weights, axis=0)
        m_run = m_new
    # seq_len 0 (a padding row) ends with acc 0 and weight_sum 0: write zeros, not NaN.
    result = acc / tl.maximum(weight_sum, 1e-30)
    out_offsets = seq * stride_out_token + head * stride_out_head + dims
    tl.store(out_ptr + out_offsets, result.to(out_ptr.dtype.element_ty), mask=dim_mask)


@dataclass(frozen=True)
class DecodeTiles:
    """Launch shape of the decode kernels (defaults tuned for Hopper, see bench/GPU_NOTES.md)."""

    block_n: int = 32  # K/V tokens per inner-loop tile
    num_warps: int = 4
    num_stages: int = 2
    partition_size_tokens: int | None = None  # None: choose_partition_size(); a multiple of block_n
    # Programs wanted per SM before partitions stop being split further: a small batch needs
    # several resident programs per SM to keep enough loads in flight.
    programs_per_sm: int = 8


def choose_partition_size(
    num_seqs: int,
    num_kv_heads: int,
    max_seq_len: int,
    num_sms: int,
    tiles: DecodeTiles = DecodeTiles(),
) -> int:
    """Tokens per partition: enough programs to fill the GPU, never more than needed."""
    block_n = tiles.block_n
    programs_without_split = max(1, num_seqs * num_kv_heads)
    partitions_wanted = math.ceil(tiles.programs_per_sm * num_sms / programs_without_split)
    size = math.ceil(max(1, max_seq_len) / max(1, partitions_wanted))
    size = min(max(size, MIN_PARTITION_SIZE_TOKENS), MAX_PARTITION_SIZE_TOKENS)
    return block_n * math.ceil(size / block_n)


def paged_decode_attention(
    inputs: PagedAttentionInputs,
    out: torch.Tensor,  # [S, num_heads, head_dim]
    tiles: DecodeTiles = DecodeTiles(),
) -> torch.Tensor:
    """Attention of one new token per sequence over its paged context; writes and returns out."""
    inputs.validate()
    query, metadata = inputs.query, inputs.metadata
    num_seqs = query.shape[0]
    if metadata.num_seqs != num_seqs:
        raise ValueError(
            f"decode needs one query row per sequence: {num_seqs} rows, {metadata.num_seqs} seqs"
        )
    if num_seqs == 0:
        return out
    partition_size = tiles.partition_size_tokens or choose_partition_size(
        num_seqs, inputs.num_kv_heads, metadata.max_seq_len, num_sms(query.device), tiles
    )
    if partition_size % tiles.block_n != 0:
        raise ValueError(f"partition size {partition_size} not a multiple of {tiles.block_n}")
    num_partitions = max(1, math.ceil(metadata.max_seq_len / partition_size))
    split = _SplitBuffers.allocate(inputs, num_partitions, partition_size)
    _launch_partitions(inputs, out, split, tiles)
    if num_partitions > 1:
        _decode_reduce_kernel[(num_seqs, inputs.num_heads)](
            out,
            split.partial_out,
            split.partial_lse,
            metadata.seq_lens,
            inputs.window_tokens,
            out.stride(0),
            out.stride(1),
            partition_size,
            num_partitions,
            head_dim=inputs.head_dim,
            BLOCK_D=triton.next_power_of_2(inputs.head_dim),
            BLOCK_P=REDUCE_BLOCK_PARTITIONS,
            num_warps=4,
        )
    return out


@dataclass(frozen=True)
class _SplitBuffers:
    """Per-partition results; tiny placeholders when one partition covers every context."""

    partial_out: torch.Tensor  # [S, H, P, D] fp32
    partial_lse: torch.Tensor  # [S, H, P] fp32
    num_partitions: int
    partition_size: int

    @classmethod
    def allocate(
        cls, inputs: PagedAttentionInputs, num_partitions: int, partition_size: int
    ) -> _SplitBuffers:
        num_seqs, device = inputs.query.shape[0], inputs.query.device
        shape = (num_seqs, inputs.num_heads, num_partitions) if num_partitions > 1 else (1, 1, 1)
        return cls(
            partial_out=torch.empty((*shape, inputs.head_dim), dtype=torch.float32, device=device),
            partial_lse=torch.empty(shape, dtype=torch.float32, device=device),
            num_partitions=num_partitions,
            partition_size=partition_size,
        )


def _launch_partitions(
    inputs: PagedAttentionInputs, out: torch.Tensor, split: _SplitBuffers, tiles: DecodeTiles
) -> None:
    query, key_cache = inputs.query, inputs.key_cache
    grid = (query.shape[0], inputs.num_kv_heads, split.num_partitions)
    _decode_partition_kernel[grid](
        out,
        split.partial_out,
        split.partial_lse,
        query,
        key_cache,
        inputs.value_cache,
        inputs.metadata.block_tables,
        inputs.metadata.seq_lens,
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
        inputs.metadata.block_tables.stride(0),
        inputs.num_heads,
        split.partition_size,
        split.num_partitions,
        block_size=inputs.block_size,
        head_dim=inputs.head_dim,
        QUERIES_PER_KV=inputs.queries_per_kv,
        BLOCK_G=max(16, triton.next_power_of_2(inputs.queries_per_kv)),
        BLOCK_D=triton.next_power_of_2(inputs.head_dim),
        BLOCK_N=tiles.block_n,
        SINGLE_PARTITION=split.num_partitions == 1,
        HAS_SOFTCAP=inputs.softcap_log2 > 0,
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
    )


