"""The paged KV cache tensors: per layer, K and V of shape [num_blocks, block_size, kv_heads, D].

Blocks are the router's unit of allocation; the shard only holds the tensors and writes / reads
the slots each request's block table names (see layers/attention/backend.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ferrite_server.models.interface import KVCache


@dataclass(frozen=True)
class KVCacheSpec:
    num_layers: int
    block_size: int
    num_kv_heads: int  # on this rank
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_block(self) -> int:
        """K and V of every layer for block_size tokens."""
        element_bytes = torch.empty((), dtype=self.dtype).element_size()
        per_layer = 2 * self.block_size * self.num_kv_heads * self.head_dim * element_bytes
        return self.num_layers * per_layer

    def num_blocks_for_tokens(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)


def allocate_kv_cache(spec: KVCacheSpec, num_blocks: int, device: torch.device) -> list[KVCache]:
    shape = (num_blocks, spec.block_size, spec.num_kv_heads, spec.head_dim)
    # Zeros, not empty: unwritten slots are never read, but zeros keep a stray read finite.
    # On CPU zeroed pages are only touched when first written.
    return [
        (
            torch.zeros(shape, dtype=spec.dtype, device=device),
            torch.zeros(shape, dtype=spec.dtype, device=device),
        )
        for _ in range(spec.num_layers)
    ]


def kv_cache_bytes(kv_caches: list[KVCache]) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv_caches)
