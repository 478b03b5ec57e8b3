"""Block tables, slot mapping and forward inputs, and the paged torch attention reference."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch

from ferrite_server.engine.forward_inputs import build_forward_inputs, slot_mapping_for
from ferrite_server.layers.attention.torch_backend import TorchAttentionBackend

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Seq:
    input_ids: tuple[int, ...]
    start_position: int
    block_table: tuple[int, ...]


def test_slot_mapping_follows_the_block_table_across_block_boundaries() -> None:
    # Positions 3..8 with 4-token blocks: offset 3 of block 7, all of block 2, offset 0 of 9.
    slots = slot_mapping_for([7, 2, 9], start_position=3, num_tokens=6, block_size=4)
    assert slots == [7 * 4 + 3, 2 * 4 + 0, 2 * 4 + 1, 2 * 4 + 2, 2 * 4 + 3, 9 * 4 + 0]


def test_forward_inputs_concatenate_a_mixed_batch_without_padding() -> None:
    sequences = [
        Seq(input_ids=(11, 12, 13, 14, 15), start_position=0, block_table=(3, 8)),  # prompt
        Seq(input_ids=(21, 22, 23), start_position=6, block_table=(5, 1, 4, 6)),  # later chunk
        Seq(input_ids=(31,), start_position=9, block_table=(0, 2, 7)),  # decode
    ]
    inputs = build_forward_inputs(sequences, block_size=4, device=CPU)
    assert inputs.input_ids.tolist() == [11, 12, 13, 14, 15, 21, 22, 23, 31]
    assert inputs.positions.tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    metadata = inputs.attn_metadata
    assert metadata.query_start_loc.tolist() == [0, 5, 8, 9]
    assert metadata.query_start_loc_cpu == (0, 5, 8, 9)
    assert metadata.seq_lens.tolist() == [5, 9, 10]
    assert metadata.seq_lens_cpu == (5, 9, 10)
    assert metadata.max_query_len == 5
    assert metadata.max_seq_len == 10
    # Only the blocks each context covers, padded with 0 to the widest row.
    assert metadata.block_tables.tolist() == [[3, 8, 0], [5, 1, 4], [0, 2, 7]]
    assert metadata.block_tables.dtype == torch.int32
    expected_slots = (
        [3 * 4 + 0, 3 * 4 + 1, 3 * 4 + 2, 3 * 4 + 3, 8 * 4 + 0]
        + [1 * 4 + 2, 1 * 4 + 3, 4 * 4 + 0]
        + [7 * 4 + 1]
    )
    assert metadata.slot_mapping.tolist() == expected_slots
    assert metadata.slot_mapping.dtype == torch.int64
    assert [inputs.last_row(i) for i in range(3)] == [4, 7, 8]


def test_forward_inputs_of_an_empty_batch_are_empty() -> None:
    inputs = build_forward_inputs([], block_size=16, device=CPU)
    assert inputs.num_tokens == 0
    assert inputs.attn_metadata.num_seqs == 0


def _dense_causal_attention(
    query: torch.Tensor,  # [q_len, H, D], the last q_len positions of the context
    keys: torch.Tensor,  # [seq_len, KV, D]
    values: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Textbook attention with an explicit mask, written independently of the backend."""
    q_len, num_heads, _ = query.shape
    seq_len, num_kv_heads, _ = keys.shape
    group = num_heads // num_kv_heads
    out = torch.empty_like(query)
    for head in range(num_heads):
        k = keys[:, head // group]  # [seq_len, D]
        v = values[:, head // group]
        scores = (query[:, head] @ k.T) * scale  # [q_len, seq_len]
        positions = torch.arange(seq_len - q_len, seq_len)[:, None]
        scores = scores.masked_fill(torch.arange(seq_len)[None, :] > positions, float("-inf"))
        out[:, head] = scores.softmax(-1) @ v
    return out


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
def test_paged_attention_over_shuffled_blocks_equals_dense_attention(num_kv_heads: int) -> None:
    torch.manual_seed(0)
    block_size, num_blocks, num_heads, head_dim = 4, 32, 4, 8
    backend = TorchAttentionBackend()
    cache_shape = (num_blocks, block_size, num_kv_heads, head_dim)
    key_cache, value_cache = torch.zeros(cache_shape), torch.zeros(cache_shape)
    free_blocks = list(range(num_blocks))
    random.Random(1).shuffle(free_blocks)
    # (total tokens, tokens computed in the checked step): a prompt, a chunk after a cached
    # prefix, a decode.
    shapes = [(7, 7), (13, 5), (10, 1)]
    contexts, sequences, queries = [], [], []
    for seq_len, query_len in shapes:
        table = tuple(free_blocks.pop() for _ in range(-(-seq_len // block_size)))
        keys, values = torch.randn(2, seq_len, num_kv_heads, head_dim)
        contexts.append((keys, values))
        prefix = seq_len - query_len
        if prefix:  # an earlier step wrote the cached prefix
            slots = torch.tensor(slot_mapping_for(table, 0, prefix, block_size))
            backend.write_kv(keys[:prefix], values[:prefix], key_cache, value_cache, slots)
        sequences.append(Seq(tuple([0] * query_len), prefix, table))
        queries.append(torch.randn(query_len, num_heads, head_dim))
    inputs = build_forward_inputs(sequences, block_size, CPU)
    pairs = list(zip(contexts, queries, strict=True))
    new_keys = torch.cat([k[len(k) - len(q) :] for (k, _), q in pairs])  # the step's tokens
    new_values = torch.cat([v[len(v) - len(q) :] for (_, v), q in pairs])
    metadata = inputs.attn_metadata
    backend.write_kv(new_keys, new_values, key_cache, value_cache, metadata.slot_mapping)
    scale = head_dim**-0.5
    output = backend.forward(torch.cat(queries), key_cache, value_cache, metadata, scale)
    for index, ((keys, values), query) in enumerate(pairs):
        start, end = inputs.row_starts[index], inputs.row_starts[index + 1]
        expected = _dense_causal_attention(query, keys, values, scale)
        torch.testing.assert_close(output[start:end], expected, rtol=1e-5, atol=1e-5)


def test_write_kv_touches_only_the_mapped_slots() -> None:
    backend = TorchAttentionBackend()
    key_cache, value_cache = torch.zeros(2, 6, 4, 1, 2)
    key = torch.ones(3, 1, 2)
    slots = torch.tensor([5, 8, 23])  # block 1 offset 1, block 2 offset 0, block 5 offset 3
    backend.write_kv(key, 2 * key, key_cache, value_cache, slots)
    written = key_cache.view(-1, 1, 2).abs().sum(dim=(1, 2)).nonzero().flatten().tolist()
    assert written == [5, 8, 23]
    assert torch.equal(value_cache[5, 3], torch.full((1, 2), 2.0))
