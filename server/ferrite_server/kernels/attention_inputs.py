"""The inputs every paged-attention launcher takes, bundled so launchers stay small and typed."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ferrite_server.layers.attention.backend import (
    FULL_ATTENTION,
    AttentionMetadata,
    AttentionVariant,
)

LOG2_E = 1.4426950408889634


@dataclass(frozen=True)
class PagedAttentionInputs:
    """One layer's attention call: new queries, that layer's paged K/V, the step's batch layout."""

    query: torch.Tensor  # [T, num_heads, head_dim]
    key_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    value_cache: torch.Tensor  # [num_blocks, block_size, num_kv_heads, head_dim]
    metadata: AttentionMetadata
    scale: float  # softmax scale, usually head_dim ** -0.5
    # Per-tensor dequantization scales of an fp8 cache (stored = value / scale); 1.0 otherwise.
    k_scale: float = 1.0
    v_scale: float = 1.0
    variant: AttentionVariant = FULL_ATTENTION  # sliding window / logit soft-cap

    @property
    def window_tokens(self) -> int:
        """The kernels' spelling of the window: 0 for none."""
        return self.variant.sliding_window_tokens or 0

    @property
    def softcap_log2(self) -> float:
        """The soft-cap in the kernels' log2 score units (c * tanh(s / c) scales with s);
        0.0 for none."""
        cap = self.variant.logit_softcap
        return cap * LOG2_E if cap else 0.0

    @property
    def num_heads(self) -> int:
        return self.query.shape[1]

    @property
    def num_kv_heads(self) -> int:
        return self.key_cache.shape[2]

    @property
    def head_dim(self) -> int:
        return self.query.shape[2]

    @property
    def block_size(self) -> int:
        return self.key_cache.shape[1]

    @property
    def queries_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    def validate(self) -> None:
        """Raise ValueError on shapes/layouts the kernels do not handle."""
        if self.query.dim() != 3 or self.key_cache.dim() != 4:
            raise ValueError("query must be [T, H, D] and caches [blocks, block_size, Hkv, D]")
        if self.key_cache.dtype not in (self.query.dtype, torch.float8_e4m3fn):
            raise ValueError(f"cache dtype {self.key_cache.dtype} is neither the query's nor fp8")
        if self.key_cache.dtype != self.value_cache.dtype:
            raise ValueError("key_cache and value_cache dtypes differ")
        if self.key_cache.shape != self.value_cache.shape:
            raise ValueError("key_cache and value_cache shapes differ")
        if self.key_cache.stride() != self.value_cache.stride():
            raise ValueError("key_cache and value_cache layouts differ")
        if self.key_cache.shape[3] != self.head_dim:
            raise ValueError(f"cache head_dim {self.key_cache.shape[3]} != query {self.head_dim}")
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(f"{self.num_heads} query heads not a multiple of {self.num_kv_heads}")
        if self.query.stride(2) != 1 or self.key_cache.stride(3) != 1:
            raise ValueError("head_dim must be contiguous in query and caches")
        if self.metadata.block_tables.stride(1) != 1:
            raise ValueError("block_tables rows must be contiguous")
