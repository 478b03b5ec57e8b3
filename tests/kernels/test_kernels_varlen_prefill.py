"""Varlen causal prefill over paged K/V (Triton interpreter) against the PyTorch reference."""

from __future__ import annotations

import pytest
import torch
from paged_cases import PagedCase, build_batch, poisoned_like, reference_attention, tolerance

from ferrite_server.kernels.attention_inputs import PagedAttentionInputs
from ferrite_server.kernels.varlen_prefill_attention import varlen_prefill_attention

# One step of a continuous batch: a whole 150-token prompt (more than one 128-row tile), a
# 40-token chunk after a cached 91-token prefix, a decode token at position 57, and a prompt
# shorter than a block.
MIXED_QUERY_LENS = (150, 40, 1, 5)
MIXED_SEQ_LENS = (150, 131, 58, 5)


def _run_varlen(case: PagedCase) -> tuple[torch.Tensor, torch.Tensor]:
    batch = build_batch(case, seed=sum(case.seq_lens) + case.head_dim)
    out = poisoned_like(batch.query)
    inputs = PagedAttentionInputs(
        batch.query, batch.key_cache, batch.value_cache, batch.metadata, batch.scale
    )
    varlen_prefill_attention(inputs, out)
    return out, reference_attention(batch)


def _assert_close(out: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    assert not torch.isnan(out).any(), "some output elements were never written"
    torch.testing.assert_close(out.float(), expected, atol=tolerance(dtype), rtol=tolerance(dtype))


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("queries_per_kv", [1, 4, 8])
def test_varlen_mixed_batch_matches_reference(head_dim: int, queries_per_kv: int) -> None:
    case = PagedCase(
        query_lens=MIXED_QUERY_LENS,
        seq_lens=MIXED_SEQ_LENS,
        num_kv_heads=2 if queries_per_kv < 8 else 1,
        queries_per_kv=queries_per_kv,
        head_dim=head_dim,
        block_size=16,
    )
    out, expected = _run_varlen(case)
    _assert_close(out, expected, case.dtype)


@pytest.mark.parametrize("block_size", [8, 32])
def test_varlen_chunk_after_long_cached_prefix(block_size: int) -> None:
    # Chunked prefill: 70 new tokens after a 190-token cached prefix spanning many blocks,
    # beside a second sequence's first chunk. Several K/V tiles lie before the diagonal, and the
    # first new token (position 190) is the second-to-last of a 64-token K/V tile, so a tile
    # wrongly treated as fully visible would leak position 191 into it.
    case = PagedCase(
        query_lens=(70, 33),
        seq_lens=(260, 33),
        num_kv_heads=1,
        queries_per_kv=4,
        head_dim=64,
        block_size=block_size,
    )
    out, expected = _run_varlen(case)
    _assert_close(out, expected, case.dtype)


def test_varlen_non_power_of_two_group_and_head_dim() -> None:
    # 3 query heads per KV head: the packed rows include padding heads that must stay unused;
    # head_dim 96 (Phi-3) pads the feature axis to 128.
    case = PagedCase(
        query_lens=(20, 1),
        seq_lens=(52, 17),
        num_kv_heads=2,
        queries_per_kv=3,
        head_dim=96,
        block_size=16,
    )
    out, expected = _run_varlen(case)
    _assert_close(out, expected, case.dtype)


@pytest.mark.parametrize("queries_per_kv", [1, 8])
def test_varlen_float16(queries_per_kv: int) -> None:
    case = PagedCase(
        query_lens=(24, 9),
        seq_lens=(90, 9),
        num_kv_heads=1,
        queries_per_kv=queries_per_kv,
        head_dim=128,
        block_size=16,
        dtype=torch.float16,
    )
    out, expected = _run_varlen(case)
    assert out.dtype == torch.float16
    _assert_close(out, expected, case.dtype)
