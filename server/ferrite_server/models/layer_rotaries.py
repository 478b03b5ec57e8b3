"""The rotary embeddings of a model whose layers may use different RoPE (Gemma 3: a local base
for sliding layers, a scaled global one for full layers).

One `RotaryEmbedding` per distinct `RopeConfig`; each step computes each one's cos / sin once
and hands every layer its own. Length-dependent scalings (dynamic NTK, longrope) get each
token's sequence length from the step's attention metadata.
"""

from __future__ import annotations

import torch
from torch import nn

from ferrite_server.layers.attention.backend import AttentionMetadata
from ferrite_server.layers.rotary import RotaryEmbedding
from ferrite_server.models.config import DecoderConfig

CosSin = tuple[torch.Tensor, torch.Tensor]  # [T, rotary_dim] each


class LayerRotaries(nn.Module):
    def __init__(self, config: DecoderConfig, device: torch.device) -> None:
        super().__init__()
        ropes = [config.attention_of(index).rope for index in range(config.num_layers)]
        distinct = list(dict.fromkeys(ropes))
        self.embeddings = nn.ModuleList(
            RotaryEmbedding(config.head_dim, rope, device) for rope in distinct
        )
        self.layer_embedding = [distinct.index(rope) for rope in ropes]  # per layer
        self.needs_lengths = any(rope.depends_on_length for rope in distinct)

    def cos_sin_per_layer(
        self, positions: torch.Tensor, dtype: torch.dtype, attn_metadata: AttentionMetadata
    ) -> list[CosSin]:
        context_lens = _token_context_lens(attn_metadata) if self.needs_lengths else None
        computed = [rotary.cos_sin(positions, dtype, context_lens) for rotary in self.embeddings]
        return [computed[index] for index in self.layer_embedding]


def _token_context_lens(metadata: AttentionMetadata) -> torch.Tensor:  # [T] int64
    """Each token's sequence length this step (what transformers' dynamic RoPE scales by)."""
    starts = metadata.query_start_loc_cpu
    query_lens = torch.tensor([starts[s + 1] - starts[s] for s in range(metadata.num_seqs)])
    seq_lens = torch.tensor(metadata.seq_lens_cpu)
    return seq_lens.repeat_interleave(query_lens).to(metadata.seq_lens.device)
