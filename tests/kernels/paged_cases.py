"""Random paged-attention batches and an fp32 reference, shared by the kernel tests.

Blocks are handed out in a shuffled order and every cache element is random (never zero), so a
kernel that reads the wrong block, offset or head, or skips a token, gets a different answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ferrite_server.layers.attention.backend import AttentionMetadata
from ferrite_server.layers.attention.torch_backend import TorchAttentionBackend


@dataclass(frozen=True)
class PagedCase:
    query_lens: tuple[int, ...]  # new tokens per sequence
    seq_lens: tuple[int, ...]  # context per sequence incl. the new tokens
    num_kv_heads: int
    queries_per_kv: int
    head_dim: int
    block_size: int
    dtype: torch.dtype = torch.float32
    spare_blocks: int = 3  # random blocks no sequence owns

    @property
    def num_heads(self) -> int:
        return self.num_kv_heads * self.queries_per_kv


@dataclass(frozen=True)
class PagedBatch:
    query: torch.Tensor  # [T, H, D]
    key_cache: torch.Tensor  # [num_blocks, block_size, Hkv, D]
    value_cache: torch.Tensor
    metadata: AttentionMetadata
    scale: float


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def build_metadata(
    query_lens: tuple[int, ...],
    seq_lens: tuple[int, ...],
    block_size: int,
    num_blocks: int,
    generator: torch.Generator,
) -> AttentionMetadata:
    """Shuffled, disjoint block tables; slots of each sequence's last query_len positions."""
    blocks_needed = [_cdiv(n, block_size) for n in seq_lens]
    max_blocks = max(blocks_needed)
    order = torch.randperm(num_blocks, generator=generator)
    block_tables = torch.zeros(len(seq_lens), max_blocks, dtype=torch.int32)
    slots: list[int] = []
    next_block = 0
    for s, (q_len, seq_len) in enumerate(zip(query_lens, seq_lens)):
        owned = order[next_block : next_block + blocks_needed[s]]
        next_block += blocks_needed[s]
        block_tables[s, : len(owned)] = owned.to(torch.int32)
        for position in range(seq_len - q_len, seq_len):
            block = int(block_tables[s, position // block_size])
            slots.append(block * block_size + position % block_size)
    starts = [0]
    for q_len in query_lens:
        starts.append(starts[-1] + q_len)
    return AttentionMetadata(
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=block_tables,
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        query_start_loc_cpu=tuple(starts),
        seq_lens_cpu=tuple(seq_lens),
    )


def build_batch(case: PagedCase, seed: int = 0) -> PagedBatch:
    generator = torch.Generator().manual_seed(seed)
    num_blocks = sum(_cdiv(n, case.block_size) for n in case.seq_lens) + case.spare_blocks
    cache_shape = (num_blocks, case.block_size, case.num_kv_heads, case.head_dim)
    num_tokens = sum(case.query_lens)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(case.dtype)

    return PagedBatch(
        query=rand(num_tokens, case.num_heads, case.head_dim),
        key_cache=rand(*cache_shape),
        value_cache=rand(*cache_shape),
        metadata=build_metadata(
            case.query_lens, case.seq_lens, case.block_size, num_blocks, generator
        ),
        scale=case.head_dim**-0.5,
    )


def reference_attention(batch: PagedBatch) -> torch.Tensor:
    """fp32 attention through the PyTorch reference backend: [T, H, D] float32."""
    return TorchAttentionBackend().forward(
        batch.query.float(),
        batch.key_cache.float(),
        batch.value_cache.float(),
        batch.metadata,
        batch.scale,
    )


def poisoned_like(tensor: torch.Tensor) -> torch.Tensor:
    """A NaN-filled output buffer: any element a kernel fails to write stays NaN."""
    return torch.full_like(tensor, float("nan"))


def tolerance(dtype: torch.dtype) -> float:
    return 2e-5 if dtype == torch.float32 else 4e-3
