"""Token embedding and LM head (vocabulary rows), optionally sharing one weight.

Both hold a [vocab_size, hidden_size] matrix. With tensor parallelism the vocabulary rows are
the natural split (each rank embeds / scores its own id range); the loaders already slice along
dim 0, the masked lookup and logit gather are added with tensor parallelism.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ferrite_server.layers.placement import LayerPlacement
from ferrite_server.weights import CheckpointError, ShardId, attach_weight_loader, copy_checked


class _VocabRows(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, placement: LayerPlacement) -> None:
        super().__init__()
        self.placement = placement
        self.vocab_size = vocab_size
        local_rows = vocab_size // placement.tp.world_size
        self.weight = placement.empty_parameter(local_rows, hidden_size)
        attach_weight_loader(self.weight, self._load)

    def _load(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: ShardId) -> None:
        if shard_id is not None:
            raise CheckpointError("vocabulary matrix is not fused")
        copy_checked(param.data, self.placement.tp.shard(loaded, 0), "vocabulary rows")


class VocabEmbedding(_VocabRows):
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # [T] -> [T, hidden]
        return F.embedding(input_ids, self.weight)


class LMHead(_VocabRows):
    """Scores hidden states against the vocabulary; logits come back in float32."""

    def tie_to(self, embedding: VocabEmbedding) -> None:
        """Share the embedding's weight (`tie_word_embeddings`): one tensor, loaded once."""
        self.weight = embedding.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [N, hidden] -> [N, vocab]
        return F.linear(hidden, self.weight).float()
