"""The triton attention backend over successive steps, against the torch backend."""

from __future__ import annotations

import torch

from ferrite_server.layers.attention.backend import AttentionMetadata
from ferrite_server.layers.attention.torch_backend import TorchAttentionBackend
from ferrite_server.layers.attention.triton_backend import TritonAttentionBackend, is_pure_decode

NUM_KV_HEADS, QUERIES_PER_KV, HEAD_DIM, BLOCK_SIZE, NUM_BLOCKS = 2, 4, 64, 16, 24


def _step(
    backend: TritonAttentionBackend | TorchAttentionBackend,
    caches: tuple[torch.Tensor, torch.Tensor],
    qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    metadata: AttentionMetadata,
) -> torch.Tensor:
    query, key, value = qkv
    backend.write_kv(key, value, caches[0], caches[1], metadata.slot_mapping)
    return backend.forward(query, caches[0], caches[1], metadata, HEAD_DIM**-0.5)


def test_prefill_then_mixed_then_decode_steps_match_torch_backend() -> None:
    generator = torch.Generator().manual_seed(3)
    cache_shape = (NUM_BLOCKS, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM)
    triton_caches = (
        torch.randn(cache_shape, generator=generator),
        torch.randn(cache_shape, generator=generator),
    )
    torch_caches = (triton_caches[0].clone(), triton_caches[1].clone())
    triton_backend = TritonAttentionBackend(torch.device("cpu"))
    torch_backend = TorchAttentionBackend()

    # (query_lens, seq_lens) per step: two prompts (one chunked), a mixed step finishing the
    # chunked prompt while the other decodes, then a pure decode step.
    steps = [((40, 30), (40, 30)), ((1, 25), (41, 55)), ((1, 1), (42, 56))]
    block_order = torch.randperm(NUM_BLOCKS, generator=generator)
    for query_lens, seq_lens in steps:
        metadata = _metadata_for_step(query_lens, seq_lens, block_order)
        num_tokens = sum(query_lens)
        qkv = (
            torch.randn(num_tokens, NUM_KV_HEADS * QUERIES_PER_KV, HEAD_DIM, generator=generator),
            torch.randn(num_tokens, NUM_KV_HEADS, HEAD_DIM, generator=generator),
            torch.randn(num_tokens, NUM_KV_HEADS, HEAD_DIM, generator=generator),
        )
        out = _step(triton_backend, triton_caches, qkv, metadata)
        expected = _step(torch_backend, torch_caches, qkv, metadata)
        assert out.shape == qkv[0].shape and not torch.isnan(out).any()
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(triton_caches[0], torch_caches[0], atol=0, rtol=0)
        torch.testing.assert_close(triton_caches[1], torch_caches[1], atol=0, rtol=0)


def _metadata_for_step(
    query_lens: tuple[int, ...], seq_lens: tuple[int, ...], block_order: torch.Tensor
) -> AttentionMetadata:
    """Sequence s owns every other block of one shuffled order, so tables stay fixed per step."""
    blocks_per_seq = NUM_BLOCKS // 2
    tables = torch.stack([block_order[s::2][:blocks_per_seq] for s in range(len(seq_lens))])
    slots = [
        int(tables[s, p // BLOCK_SIZE]) * BLOCK_SIZE + p % BLOCK_SIZE
        for s, (q_len, seq_len) in enumerate(zip(query_lens, seq_lens))
        for p in range(seq_len - q_len, seq_len)
    ]
    starts = [0]
    for q_len in query_lens:
        starts.append(starts[-1] + q_len)
    return AttentionMetadata(
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=tables.to(torch.int32),
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        query_start_loc_cpu=tuple(starts),
        seq_lens_cpu=tuple(seq_lens),
    )


def test_dispatch_takes_decode_kernel_only_for_pure_decode() -> None:
    block_order = torch.arange(NUM_BLOCKS)
    decode = _metadata_for_step((1, 1), (5, 9), block_order)
    mixed = _metadata_for_step((1, 3), (5, 9), block_order)
    assert is_pure_decode(torch.empty(2, 8, HEAD_DIM), decode)
    assert not is_pure_decode(torch.empty(4, 8, HEAD_DIM), mixed)
