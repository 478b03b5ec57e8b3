"""All of a step's decode tokens attended in one padded SDPA call (the torch backend's fast path).

A decode token is a sequence with one query row that sees its whole context, so the contexts can
be gathered from the paged cache side by side, padded to the longest, and masked: one gather and
one SDPA per layer instead of one per sequence. Padding keys are masked out, so each row's
softmax covers exactly its own context.

A step of decodes only (every query row a decode, the common case, batch 1 included) takes the
same path with no row selection: the query is used as it is, the result returned as it is, and
no mask is built when no context is padded; that is ~half of the attention's operator calls,
which dominate a small model's CPU decode step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ferrite_server.layers.attention.backend import AttentionMetadata, AttentionVariant
from ferrite_server.layers.attention.torch_attention_math import attend

# (gathered cache rows, query dtype, is_key) -> rows as attention reads them.
Widen = Callable[[torch.Tensor, torch.dtype, bool], torch.Tensor]
# Below this many decode sequences of a mixed step the per-sequence loop is as cheap, and it
# needs no padding. A step of decodes only is always batched.
MIN_BATCHED_DECODES = 2


@dataclass(frozen=True)
class DecodeBatch:
    seq_indices: frozenset[int]  # which of the step's sequences are decodes
    query_rows: torch.Tensor  # [S] int64: the decode tokens' rows in the step's query
    block_tables: torch.Tensor  # [S, num_blocks] blocks covering the longest context
    key_mask: torch.Tensor | None  # [S, 1, 1, max_len] bool (True: in the context); None: no padding
    max_len: int
    seq_lens: torch.Tensor  # [S] int64
    decodes_only: bool  # every query row of the step is a decode, in sequence order

    @staticmethod
    def plan(metadata: AttentionMetadata, block_size: int) -> DecodeBatch | None:
        """The step's decode sequences, or None when there are too few to batch."""
        starts = metadata.query_start_loc_cpu
        decodes = [s for s in range(metadata.num_seqs) if starts[s + 1] - starts[s] == 1]
        decodes_only = len(decodes) == metadata.num_seqs > 0
        if len(decodes) < MIN_BATCHED_DECODES and not decodes_only:
            return None
        device = metadata.block_tables.device
        seq_lens = [metadata.seq_lens_cpu[s] for s in decodes]
        max_len = max(seq_lens)
        num_blocks = -(-max_len // block_size)
        index = torch.tensor(decodes, dtype=torch.int64, device=device)
        lens = torch.tensor(seq_lens, dtype=torch.int64, device=device)
        positions = torch.arange(max_len, device=device)
        padded = min(seq_lens) != max_len
        return DecodeBatch(
            seq_indices=frozenset(decodes),
            query_rows=torch.tensor([starts[s] for s in decodes], dtype=torch.int64, device=device),
            # Entries past a sequence's own blocks are 0 (a real block): read, then masked.
            block_tables=metadata.block_tables.index_select(0, index)[:, :num_blocks].long(),
            key_mask=(positions[None, :] < lens[:, None])[:, None, None, :] if padded else None,
            max_len=max_len,
            seq_lens=lens,
            decodes_only=decodes_only,
        )

    def includes(self, seq_index: int) -> bool:
        return seq_index in self.seq_indices

    def attend(
        self,
        query: torch.Tensor,  # [T, num_heads, D]
        kv_cache: tuple[torch.Tensor, torch.Tensor],  # [num_blocks, block_size, kv_heads, D] each
        scale: float,
        variant: AttentionVariant,
        output: torch.Tensor | None,  # [T, num_heads, D]: the decode rows are written
        widen: Widen | None = None,
    ) -> torch.Tensor:  # [S, num_heads, D]: the decode rows' attention, in sequence order
        """Attend every decode row; also write them into `output` unless it is None (a step
        of decodes only: the returned rows are the whole output)."""
        key_cache, value_cache = kv_cache
        keys = self._gather(key_cache)  # [S, num_kv_heads, max_len, D]
        values = self._gather(value_cache)
        if widen is not None:  # e.g. an fp8 cache: to the query's dtype, times its scale
            keys, values = widen(keys, query.dtype, True), widen(values, query.dtype, False)
        rows = query if self.decodes_only else query.index_select(0, self.query_rows)
        queries = rows.unsqueeze(2)  # [S, num_heads, 1, D]
        attended = attend(
            queries, keys, values, self._mask(variant), scale, variant.logit_softcap
        )[:, :, 0, :]
        if output is not None:
            output.index_copy_(0, self.query_rows, attended)
        return attended

    def _mask(self, variant: AttentionVariant) -> torch.Tensor | None:
        if variant.sliding_window_tokens is None:
            return self.key_mask
        # The decode token sits at position seq_len - 1 and sees the last W keys.
        positions = torch.arange(self.max_len, device=self.seq_lens.device)
        first_visible = self.seq_lens - variant.sliding_window_tokens  # [S]
        window = (positions[None, :] >= first_visible[:, None])[:, None, None, :]
        return window if self.key_mask is None else self.key_mask & window

    def _gather(self, cache: torch.Tensor) -> torch.Tensor:
        # [S * num_blocks, block_size, kv_heads, D] -> [S, max_len, kv_heads, D] -> [S, kv_heads, max_len, D]
        # index_select copies whole blocks (contiguous rows); advanced indexing (cache[tables])
        # gathers element by element (~5x slower for these shapes in isolation on this CPU).
        num_seqs, num_blocks = self.block_tables.shape
        gathered = cache.index_select(0, self.block_tables.flatten())
        gathered = gathered.view(num_seqs, num_blocks * cache.shape[1], *cache.shape[2:])
        return gathered[:, : self.max_len].transpose(1, 2)
