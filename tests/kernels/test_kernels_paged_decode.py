"""Paged decode attention (Triton interpreter) against the PyTorch reference backend."""

from __future__ import annotations

import pytest
import torch
from paged_cases import (
    PagedBatch,
    PagedCase,
    build_batch,
    poisoned_like,
    reference_attention,
    tolerance,
)

from ferrite_server.kernels.attention_inputs import PagedAttentionInputs
from ferrite_server.kernels.paged_decode_attention import (
    DecodeTiles,
    choose_partition_size,
    paged_decode_attention,
)

# Ragged contexts: one token, a partial block, several blocks, many blocks.
RAGGED_SEQ_LENS = (1, 23, 70, 197)


def _run_decode(
    case: PagedCase, partition_size_tokens: int | None, batch: PagedBatch | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    batch = build_batch(case) if batch is None else batch
    out = poisoned_like(batch.query)
    inputs = PagedAttentionInputs(
        batch.query, batch.key_cache, batch.value_cache, batch.metadata, batch.scale
    )
    paged_decode_attention(inputs, out, DecodeTiles(partition_size_tokens=partition_size_tokens))
    return out, reference_attention(batch)


def _assert_close(out: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    assert not torch.isnan(out).any(), "some output elements were never written"
    torch.testing.assert_close(out.float(), expected, atol=tolerance(dtype), rtol=tolerance(dtype))


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("queries_per_kv", [1, 4, 8])
def test_decode_split_context_matches_reference(head_dim: int, queries_per_kv: int) -> None:
    # 64-token partitions: the longest context is split in 4, the reduce kernel combines them.
    case = PagedCase(
        query_lens=(1,) * len(RAGGED_SEQ_LENS),
        seq_lens=RAGGED_SEQ_LENS,
        num_kv_heads=2,
        queries_per_kv=queries_per_kv,
        head_dim=head_dim,
        block_size=16,
    )
    out, expected = _run_decode(case, partition_size_tokens=64)
    _assert_close(out, expected, case.dtype)


@pytest.mark.parametrize("block_size", [8, 32])
@pytest.mark.parametrize("partition_size_tokens", [None, 128])
def test_decode_block_sizes_single_and_split(
    block_size: int, partition_size_tokens: int | None
) -> None:
    case = PagedCase(
        query_lens=(1, 1, 1),
        seq_lens=(150, 9, 64),
        num_kv_heads=1,
        queries_per_kv=4,
        head_dim=64,
        block_size=block_size,
    )
    out, expected = _run_decode(case, partition_size_tokens)
    _assert_close(out, expected, case.dtype)


@pytest.mark.parametrize("queries_per_kv", [1, 8])
def test_decode_float16(queries_per_kv: int) -> None:
    case = PagedCase(
        query_lens=(1, 1),
        seq_lens=(131, 40),
        num_kv_heads=1,
        queries_per_kv=queries_per_kv,
        head_dim=128,
        block_size=16,
        dtype=torch.float16,
    )
    out, expected = _run_decode(case, partition_size_tokens=64)
    assert out.dtype == torch.float16
    _assert_close(out, expected, case.dtype)


def test_decode_non_power_of_two_group_and_head_dim() -> None:
    case = PagedCase(
        query_lens=(1, 1),
        seq_lens=(100, 7),
        num_kv_heads=2,
        queries_per_kv=3,
        head_dim=96,
        block_size=16,
    )
    out, expected = _run_decode(case, partition_size_tokens=64)
    _assert_close(out, expected, case.dtype)


def test_decode_more_partitions_than_one_reduce_step() -> None:
    # 18 partitions of 64 tokens: the reduce kernel combines them over two loop steps. The last
    # positions' keys are boosted so the second step holds the largest scores and has to
    # rescale what the first step accumulated.
    case = PagedCase(
        query_lens=(1, 1),
        seq_lens=(1100, 5),
        num_kv_heads=1,
        queries_per_kv=1,
        head_dim=64,
        block_size=32,
    )
    batch = build_batch(case)
    query = batch.query[0, 0]  # [D] sequence 0's query
    for position in range(1024, 1100):
        block = int(batch.metadata.block_tables[0, position // case.block_size])
        key_row = batch.key_cache[block, position % case.block_size, 0]
        key_row += 3.0 * query / query.norm()  # raises this key's score by ~3 * |q| * scale
    out, expected = _run_decode(case, partition_size_tokens=64, batch=batch)
    _assert_close(out, expected, case.dtype)


def test_partition_size_fills_the_gpu_and_stays_bounded() -> None:
    # Batch 1, 8 KV heads, 132 SMs: split a 4096 context into enough partitions.
    size = choose_partition_size(num_seqs=1, num_kv_heads=8, max_seq_len=4096, num_sms=132)
    assert size % 64 == 0 and 4096 / size * 8 >= 132
    # A big batch already fills the GPU: partitions only bounded by the maximum size.
    assert choose_partition_size(64, 8, 4096, 132) == 1024
    # Short contexts are not cut finer than the minimum partition.
    assert choose_partition_size(64, 8, 100, 132) == 128


@pytest.mark.parametrize("partition_size_tokens", [64, 256])
def test_decode_padding_row_with_empty_context(partition_size_tokens: int) -> None:
    # CUDA-graph padding: a row whose seq_len is 0 must not disturb the real rows (and, when
    # partitions are combined, comes out as zeros rather than NaN).
    case = PagedCase(
        query_lens=(1, 1),
        seq_lens=(1, 150),
        num_kv_heads=1,
        queries_per_kv=4,
        head_dim=64,
        block_size=16,
    )
    batch = build_batch(case)
    expected = reference_attention(batch)
    batch.metadata.seq_lens[0] = 0
    out = poisoned_like(batch.query)
    inputs = PagedAttentionInputs(
        batch.query, batch.key_cache, batch.value_cache, batch.metadata, batch.scale
    )
    paged_decode_attention(inputs, out, DecodeTiles(partition_size_tokens=partition_size_tokens))
    _assert_close(out[1:], expected[1:], case.dtype)
    if partition_size_tokens < 150:  # split: the reduce kernel wrote the padding row
        assert torch.equal(out[0], torch.zeros_like(out[0]))
