"""Token embedding and LM head (vocabulary rows), optionally sharing one weight.

Both hold a [vocab_size, hidden_size] matrix. With tensor parallelism the vocabulary rows are
the natural split (`VocabPartition`): each rank keeps ceil(V / N) rows (the last rank's tail
is zero padding when N does not divide V, so every rank's matrix has the same shape). The
embedding looks up the ids in its range, zeroes the others and sums over ranks (each id is
found on exactly one rank); the LM head scores its rows and the ranks gather all logits, so
every rank samples from the same full [N, V] logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ferrite_server.checkpoint_slice import narrow_loaded
from ferrite_server.layers.placement import LayerPlacement
from ferrite_server.weights import (
    CheckpointError,
    ShardId,
    TensorParallelRank,
    attach_weight_loader,
    copy_checked,
)


@dataclass(frozen=True)
class VocabPartition:
    """Rank r keeps ids [row_start, row_end) in a matrix of rows_per_rank rows."""

    vocab_size: int
    rows_per_rank: int
    row_start: int
    row_end: int

    @classmethod
    def of(cls, vocab_size: int, tp: TensorParallelRank) -> VocabPartition:
        rows_per_rank = -(-vocab_size // tp.world_size)
        row_start = min(tp.rank * rows_per_rank, vocab_size)
        return cls(vocab_size, rows_per_rank, row_start, min(row_start + rows_per_rank, vocab_size))

    @property
    def num_real_rows(self) -> int:
        return self.row_end - self.row_start


class _VocabRows(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, placement: LayerPlacement) -> None:
        super().__init__()
        self.placement = placement
        self.vocab_size = vocab_size
        self.partition = VocabPartition.of(vocab_size, placement.tp)
        self.weight = placement.empty_parameter(self.partition.rows_per_rank, hidden_size)
        attach_weight_loader(self.weight, self._load, takes_slices=True)

    def _load(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: ShardId) -> None:
        if shard_id is not None:
            raise CheckpointError("vocabulary matrix is not fused")
        if loaded.shape[0] != self.vocab_size:
            raise CheckpointError(
                f"vocabulary matrix has {loaded.shape[0]} rows, config says {self.vocab_size}"
            )
        real_rows = self.partition.num_real_rows
        rows = narrow_loaded(loaded, 0, self.partition.row_start, real_rows)
        copy_checked(param.data[:real_rows], rows, "vocabulary rows")
        param.data[real_rows:].zero_()  # padding rows: never looked up, logits cut off


class VocabEmbedding(_VocabRows):
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [T] -> [T, hidden]
        group = self.placement.group
        if not group.is_parallel:
            return F.embedding(input_ids, self.weight)
        local_ids = input_ids - self.partition.row_start
        elsewhere = (local_ids < 0) | (local_ids >= self.partition.num_real_rows)  # [T]
        embedded = F.embedding(local_ids.masked_fill(elsewhere, 0), self.weight)  # [T, H]
        embedded.masked_fill_(elsewhere[:, None], 0.0)
        return group.all_reduce(embedded)  # exact: one rank contributes each row


class LMHead(_VocabRows):
    """Scores hidden states against the vocabulary; logits come back in float32.

    Weight-only quantization (`--quantize int8 / int4`) may quantize the head too
    (layers/quantization/weight_only.py says to which bits and why): the rows are then scored
    by the quantized product; a tied head keeps the float weight for the embedding's lookups.
    """

    tied = False
    weight_only_product = None

    def tie_to(self, embedding: VocabEmbedding) -> None:
        """Share the embedding's weight (`tie_word_embeddings`): one tensor, loaded once."""
        self.weight = embedding.weight
        self.tied = True

    def process_weights_after_loading(self) -> None:
        from ferrite_server.layers.quantization.weight_only import quantize_lm_head

        quantize_lm_head(self, self.placement.quantization)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [N, hidden] -> [N, vocab]
        if self.weight_only_product is not None:
            logits = self.weight_only_product(hidden).float()  # [N, rows_per_rank]
        else:
            logits = F.linear(hidden, self.weight).float()  # [N, rows_per_rank]
        group = self.placement.group
        if not group.is_parallel:
            return logits
        gathered = group.all_gather_last_dim(logits)  # [N, world_size * rows_per_rank]
        return gathered[:, : self.vocab_size].contiguous()
