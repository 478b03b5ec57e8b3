"""The attention backend interface: one object per process, chosen at start-up.

A step's tokens from all sequences are concatenated without padding ("varlen"): T query
tokens from S sequences. Sequence s owns query rows query_start_loc[s] .. query_start_loc[s+1];
its context (cached prefix + those new tokens) has seq_lens[s] tokens, of which the last
(query_start_loc[s+1] - query_start_loc[s]) are the new ones, so attention is causal with an
offset. A decode is simply a sequence with one query token.

KV cache layout (per layer, written by `write_kv`, read by `forward`):
    key_cache, value_cache: [num_blocks, block_size, num_kv_heads, head_dim]
Token at position p of sequence s lives in block block_tables[s, p // block_size] at offset
p % block_size; its flat slot is block * block_size + offset.

Layers differ in how they attend (`AttentionVariant`): a sliding window W lets a token at
position i see only keys at positions i - W < j <= i (transformers' sliding-window mask: W keys,
itself included), and a logit soft-cap c replaces each score s by c * tanh(s / c) before the
mask and softmax (Gemma 2). Every backend applies both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ferrite_server.layers.lora import LoraBatch


@dataclass(frozen=True)
class AttentionVariant:
    """How one layer attends beyond causal softmax(q k^T * scale) v."""

    sliding_window_tokens: int | None = None  # None: every earlier key
    logit_softcap: float | None = None  # None: scores as they are

    def first_visible_position(self, position: int) -> int:
        """The earliest key position a query at `position` sees."""
        if self.sliding_window_tokens is None:
            return 0
        return max(0, position - self.sliding_window_tokens + 1)


FULL_ATTENTION = AttentionVariant()


@dataclass(frozen=True)
class AttentionMetadata:
    """Everything attention needs about one step's batch; passed explicitly to forward()."""

    query_start_loc: torch.Tensor  # [S + 1] int32, on device: cumulative query lengths
    seq_lens: torch.Tensor  # [S] int32, on device: context length incl. this step's tokens
    block_tables: torch.Tensor  # [S, max_blocks_per_seq] int32, on device; unused entries 0
    slot_mapping: torch.Tensor  # [T] int64, on device: cache slot of each new token
    max_query_len: int
    max_seq_len: int
    # Host copies for backends that loop over sequences (the torch reference).
    query_start_loc_cpu: tuple[int, ...]
    seq_lens_cpu: tuple[int, ...]
    # Each token's LoRA adapter, read by the linear layers (layers/lora.py); None: no token of
    # the step has one. Not attention's, but it rides along to every layer the same way.
    lora: LoraBatch | None = None

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)


class AttentionBackend(Protocol):
    name: str

    def write_kv(
        self,
        key: torch.Tensor,  # [T, num_kv_heads, head_dim]
        value: torch.Tensor,  # [T, num_kv_heads, head_dim]
        key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        value_cache: torch.Tensor,
        slot_mapping: torch.Tensor,  # [T] int64
    ) -> None:
        """Scatter this step's new K/V into the paged cache."""

    def forward(
        self,
        query: torch.Tensor,  # [T, num_heads, head_dim]
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        metadata: AttentionMetadata,
        scale: float,
        variant: AttentionVariant = FULL_ATTENTION,
    ) -> torch.Tensor:  # [T, num_heads, head_dim]
        """Causal attention of each new token over its sequence's cached + new context
        (within the variant's window, with its soft-cap).

        Handles GQA/MQA (num_heads a multiple of num_kv_heads). Called after write_kv, so the
        new tokens' K/V are already in the cache.
        """
