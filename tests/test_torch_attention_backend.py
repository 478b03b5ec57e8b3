"""The torch attention backend (the CPU's backend) against attention written out by hand, in a
step that mixes batched decode tokens of ragged lengths with prompt chunks after a cached prefix."""

from __future__ import annotations

import pytest
import torch

from ferrite_server.layers.attention.torch_backend import TorchAttentionBackend
from ferrite_server.layers.attention.torch_decode_batch import DecodeBatch
from tests.kernels.paged_cases import PagedBatch, PagedCase, build_batch


def attention_by_hand(batch: PagedBatch) -> torch.Tensor:  # [T, H, D] float64
    """Position by position through the block tables, float64, explicit softmax."""
    metadata, block_size = batch.metadata, batch.key_cache.shape[1]
    num_heads, num_kv_heads = batch.query.shape[1], batch.key_cache.shape[2]
    output = torch.full(batch.query.shape, float("nan"), dtype=torch.float64)
    for s in range(metadata.num_seqs):
        start, end = metadata.query_start_loc_cpu[s], metadata.query_start_loc_cpu[s + 1]
        seq_len = metadata.seq_lens_cpu[s]
        slots = [
            (int(metadata.block_tables[s, p // block_size]), p % block_size) for p in range(seq_len)
        ]
        keys = torch.stack([batch.key_cache[b, o] for b, o in slots]).double()  # [L, Hkv, D]
        values = torch.stack([batch.value_cache[b, o] for b, o in slots]).double()
        for row in range(start, end):
            visible = seq_len - (end - row) + 1  # causal: up to and including its own position
            for head in range(num_heads):
                kv_head = head // (num_heads // num_kv_heads)
                scores = keys[:visible, kv_head] @ batch.query[row, head].double() * batch.scale
                output[row, head] = torch.softmax(scores, 0) @ values[:visible, kv_head]
    return output


@pytest.mark.parametrize(
    "case",
    [
        # Decodes only, ragged contexts spanning many blocks, GQA 4.
        PagedCase(query_lens=(1, 1, 1, 1), seq_lens=(1, 37, 16, 70), num_kv_heads=2,
                  queries_per_kv=4, head_dim=16, block_size=8),
        # Decodes interleaved with a whole prompt and a chunk after a cached prefix, MHA.
        PagedCase(query_lens=(1, 5, 1, 4, 1), seq_lens=(9, 5, 33, 20, 2), num_kv_heads=3,
                  queries_per_kv=1, head_dim=8, block_size=4),
        # A single decode beside a chunk (the per-sequence path), GQA 8.
        PagedCase(query_lens=(3, 1), seq_lens=(3, 12), num_kv_heads=1, queries_per_kv=8,
                  head_dim=16, block_size=16),
    ],
)
def test_torch_backend_matches_attention_by_hand(case: PagedCase) -> None:
    batch = build_batch(case, seed=len(case.seq_lens))
    backend = TorchAttentionBackend()
    got = backend.forward(batch.query, batch.key_cache, batch.value_cache, batch.metadata, batch.scale)
    torch.testing.assert_close(got.double(), attention_by_hand(batch), atol=1e-5, rtol=1e-5)
    # A second layer with the same step metadata reuses the decode plan and still agrees.
    again = backend.forward(batch.query, batch.key_cache, batch.value_cache, batch.metadata, batch.scale)
    assert torch.equal(again, got)


@pytest.mark.parametrize(
    "query_lens, seq_lens",
    [
        ((1, 1, 1, 1), (40, 7, 23, 1)),  # decodes only: one padded, masked batch
        ((1, 4, 1, 1), (30, 4, 9, 17)),  # decodes beside a prompt: rows picked from the step
    ],
)
def test_bfloat16_decode_rows_attended_by_kv_head_group_match_attention_by_hand(
    query_lens: tuple[int, ...], seq_lens: tuple[int, ...]
) -> None:
    # bfloat16 decode rows take the grouped path (each KV head's 3 query heads as 3 query rows);
    # a wrong head-to-group order or mask broadcast would put whole heads off, not one ulp.
    case = PagedCase(query_lens=query_lens, seq_lens=seq_lens, num_kv_heads=3, queries_per_kv=3,
                     head_dim=16, block_size=8, dtype=torch.bfloat16)
    batch = build_batch(case, seed=11)
    got = TorchAttentionBackend().forward(
        batch.query, batch.key_cache, batch.value_cache, batch.metadata, batch.scale
    )
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), attention_by_hand(batch), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize(
    "query_lens, seq_lens, expected_groups",
    [
        # Contexts of 700 and 650 share a group; 300 and 20 (+ 9) each start one.
        ((1, 1, 1, 1, 1), (700, 20, 300, 9, 650), [[0, 4], [2], [1, 3]]),
        # The same beside a prompt chunk, which is attended on its own.
        ((1, 5, 1, 1), (700, 5, 40, 300), [[0], [3], [2]]),
    ],
)
def test_decode_contexts_of_different_lengths_are_attended_in_groups(
    query_lens: tuple[int, ...], seq_lens: tuple[int, ...], expected_groups: list[list[int]]
) -> None:
    case = PagedCase(query_lens=query_lens, seq_lens=seq_lens, num_kv_heads=2, queries_per_kv=2,
                     head_dim=8, block_size=16)
    batch = build_batch(case, seed=5)
    plan = DecodeBatch.plan(batch.metadata, block_size=16)
    assert plan is not None
    starts = batch.metadata.query_start_loc_cpu
    rows = {starts[s]: s for s in range(len(seq_lens))}
    assert [[rows[int(r)] for r in g.query_rows] for g in plan.groups] == expected_groups
    assert [g.max_len for g in plan.groups] == [max(seq_lens[s] for s in g) for g in expected_groups]
    got = TorchAttentionBackend().forward(
        batch.query, batch.key_cache, batch.value_cache, batch.metadata, batch.scale
    )
    torch.testing.assert_close(got.double(), attention_by_hand(batch), atol=1e-5, rtol=1e-5)
