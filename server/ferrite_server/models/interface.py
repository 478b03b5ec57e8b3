"""What the engine needs from a model family.

A family is a class built as `cls(config, attention_backend, placement)` from the config that
`cls.config_from_hf(config_json)` reads. Its forward runs on the step's concatenated tokens
(no padding, no batch dimension) and returns hidden states; logits are a separate call so the
engine computes them only for the rows it samples from or scores.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ferrite_server.layers.attention.backend import AttentionBackend, AttentionMetadata
from ferrite_server.layers.placement import LayerPlacement
from ferrite_server.models.config import DecoderConfig, HfConfig
from ferrite_server.weights import CheckpointLayout

# Per layer: (key_cache, value_cache), each [num_blocks, block_size, num_kv_heads, head_dim].
KVCache = tuple[torch.Tensor, torch.Tensor]


class CausalLM(Protocol):
    config: DecoderConfig

    def forward(
        self,
        input_ids: torch.Tensor,  # [T] int64
        positions: torch.Tensor,  # [T] int64
        kv_caches: list[KVCache],  # one per layer
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:  # [T, hidden]
        ...

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [N, hidden] -> [N, V] f32
        ...

    def checkpoint_layout(self) -> CheckpointLayout: ...


class CausalLMFamily(Protocol):
    def __call__(
        self, config: DecoderConfig, backend: AttentionBackend, placement: LayerPlacement
    ) -> CausalLM: ...

    def config_from_hf(self, hf: HfConfig) -> DecoderConfig: ...
