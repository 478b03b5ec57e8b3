"""All of a step's decode tokens attended in one padded SDPA call (the torch backend's fast path).

A decode token is a sequence with one query row that sees its whole context, so the contexts can
be gathered from the paged cache side by side, padded to the longest, and masked: one gather and
one SDPA per layer instead of one per sequence. Padding keys are masked out, so each row's
softmax covers exactly its own context.

A step of decodes only (every query row a decode, the common case, batch 1 included) takes the
same path with no row selection: the query is used as it is, the result returned as it is, and
no mask is built when no context is padded; that is ~half of the attention's operator calls,
which dominate a small model's CPU decode step.

Contexts of very different lengths (a served batch: new requests beside ones 1,000 tokens in)
are split into groups of similar length, each padded only to its own longest: padding to the
longest of all made most of a busy step's attention work padding. A group costs a few operator
calls per layer, so a shorter sequence starts a new group only when that saves at least half
the current group's length and MIN_PADDING_SAVED_KEYS keys for it.
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
# A shorter context starts a new group only when padding it to its group's longest would add
# this many keys or more (and at least half the group's length): below that, the group's extra
# operator calls cost more than the padded keys do.
MIN_PADDING_SAVED_KEYS = 256


@dataclass(frozen=True)
class DecodeGroup:
    """Decode sequences of similar context length, padded to the longest of them."""

    query_rows: torch.Tensor  # [S] int64: the decode tokens' rows in the step's query
    block_tables: torch.Tensor  # [S, num_blocks] blocks covering the longest context
    key_mask: torch.Tensor | None  # [S, 1, 1, max_len] bool (True: in the context); None: no padding
    max_len: int
    seq_lens: torch.Tensor  # [S] int64

    @staticmethod
    def of(
        metadata: AttentionMetadata, seqs: list[int], block_size: int
    ) -> DecodeGroup:  # seqs: the step's sequence indices, in step order
        device = metadata.block_tables.device
        seq_lens = [metadata.seq_lens_cpu[s] for s in seqs]
        max_len = max(seq_lens)
        num_blocks = -(-max_len // block_size)
        index = torch.tensor(seqs, dtype=torch.int64, device=device)
        lens = torch.tensor(seq_lens, dtype=torch.int64, device=device)
        positions = torch.arange(max_len, device=device)
        padded = min(seq_lens) != max_len
        starts = metadata.query_start_loc_cpu
        return DecodeGroup(
            query_rows=torch.tensor([starts[s] for s in seqs], dtype=torch.int64, device=device),
            # Entries past a sequence's own blocks are 0 (a real block): read, then masked.
            block_tables=metadata.block_tables.index_select(0, index)[:, :num_blocks].long(),
            key_mask=(positions[None, :] < lens[:, None])[:, None, None, :] if padded else None,
            max_len=max_len,
            seq_lens=lens,
        )

    def attend(
        self,
        queries: torch.Tensor,  # [S, num_heads, D]: this group's query rows
        kv_cache: tuple[torch.Tensor, torch.Tensor],  # [num_blocks, block_size, kv_heads, D] each
        scale: float,
        variant: AttentionVariant,
        widen: Widen | None,
    ) -> torch.Tensor:  # [S, num_heads, D]
        key_cache, value_cache = kv_cache
        keys = self._gather(key_cache)  # [S, num_kv_heads, max_len, D]
        values = self._gather(value_cache)
        if widen is not None:  # e.g. an fp8 cache: to the query's dtype, times its scale
            keys, values = widen(keys, queries.dtype, True), widen(values, queries.dtype, False)
        return attend(
            queries.unsqueeze(2), keys, values, self._mask(variant), scale, variant.logit_softcap
        )[:, :, 0, :]

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


@dataclass(frozen=True)
class DecodeBatch:
    seq_indices: frozenset[int]  # which of the step's sequences are decodes
    groups: tuple[DecodeGroup, ...]  # by context length, longest first; each in step order
    decodes_only: bool  # every query row of the step is a decode

    @staticmethod
    def plan(metadata: AttentionMetadata, block_size: int) -> DecodeBatch | None:
        """The step's decode sequences, or None when there are too few to batch."""
        starts = metadata.query_start_loc_cpu
        decodes = [s for s in range(metadata.num_seqs) if starts[s + 1] - starts[s] == 1]
        decodes_only = len(decodes) == metadata.num_seqs > 0
        if len(decodes) < MIN_BATCHED_DECODES and not decodes_only:
            return None
        return DecodeBatch(
            seq_indices=frozenset(decodes),
            groups=tuple(
                DecodeGroup.of(metadata, seqs, block_size)
                for seqs in _by_context_length(decodes, metadata.seq_lens_cpu)
            ),
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
    ) -> torch.Tensor:  # [T, num_heads, D]: the output, its decode rows attended
        """Attend every decode row into `output`; a step of decodes only may pass None and
        gets a new output (with one group, the group's result itself: no copies)."""
        if output is None and len(self.groups) == 1 and self.decodes_only:
            return self.groups[0].attend(query, kv_cache, scale, variant, widen)
        if output is None:
            output = torch.empty_like(query)
        for group in self.groups:
            rows = query.index_select(0, group.query_rows)
            output.index_copy_(0, group.query_rows, group.attend(rows, kv_cache, scale, variant, widen))
        return output


def _by_context_length(seqs: list[int], seq_lens: list[int]) -> list[list[int]]:
    """`seqs` longest context first, cut where padding to the group's longest would waste at
    least half its length and MIN_PADDING_SAVED_KEYS keys; each group back in step order (one
    group of a step of decodes only then reads the query and writes the output as they are)."""
    ordered = sorted(seqs, key=lambda s: -seq_lens[s])
    groups: list[list[int]] = []
    for seq in ordered:
        if groups:
            longest, length = seq_lens[groups[-1][0]], seq_lens[seq]
            if longest - length < max(longest // 2, MIN_PADDING_SAVED_KEYS):
                groups[-1].append(seq)
                continue
        groups.append([seq])
    return [sorted(group) for group in groups]
