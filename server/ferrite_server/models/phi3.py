"""Phi-3 / Phi-3.5 / Phi-4-mini: the Llama architecture stored with fused projections.

The checkpoint already holds `qkv_proj` ([q | k | v] rows) and `gate_up_proj` ([gate | up]),
the same fused parameters ferrite builds for Llama; `FusedCheckpointWeight` hands each part to
the loader under its shard id so tensor-parallel ranks still slice per part. Phi-3 128k uses
longrope, Phi-4-mini a partial rotary factor (both in the RoPE config); Phi-3 mini 4k a
sliding window on every layer.
"""

from __future__ import annotations

from ferrite_server.models.llama import LlamaForCausalLM
from ferrite_server.weights import CheckpointLayout, FusedCheckpointWeight


class Phi3ForCausalLM(LlamaForCausalLM):
    def checkpoint_layout(self) -> CheckpointLayout:
        config = self.config
        q_rows = config.num_heads * config.head_dim
        kv_rows = config.num_kv_heads * config.head_dim
        fused = (
            FusedCheckpointWeight(".qkv_proj.", (("q", q_rows), ("k", kv_rows), ("v", kv_rows))),
            FusedCheckpointWeight(
                ".gate_up_proj.", ((0, config.intermediate_size), (1, config.intermediate_size))
            ),
        )
        ignored = frozenset({"lm_head.weight"}) if config.tie_word_embeddings else frozenset()
        return CheckpointLayout(ignored_names=ignored, fused=fused)
