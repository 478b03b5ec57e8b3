"""Mixtral: the Llama / Mistral decoder with a sparse mixture of experts as every MLP.

    x + attn(norm(x)), then x + moe(norm(x)), moe = top-k of E SiLU-gated experts

Attention (and its optional sliding window) is Llama's; the experts are layers/moe.py,
loaded from the checkpoint's `block_sparse_moe.experts.{e}.w1 / w2 / w3` and router
`block_sparse_moe.gate`.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ferrite_server.layers.attention.backend import AttentionBackend, AttentionMetadata
from ferrite_server.layers.moe import MoEConfig, SparseMoE, moe_checkpoint_weights
from ferrite_server.layers.placement import LayerPlacement
from ferrite_server.models.config import DecoderConfig, HfConfig, decoder_config_from_hf
from ferrite_server.models.interface import KVCache
from ferrite_server.models.llama import (
    PACKED_WEIGHTS,
    LlamaAttention,
    LlamaForCausalLM,
    hidden_norm,
)
from ferrite_server.weights import CheckpointLayout

_MOE_MODULE = "block_sparse_moe"


class MixtralDecoderLayer(nn.Module):
    def __init__(
        self,
        config: DecoderConfig,
        backend: AttentionBackend,
        placement: LayerPlacement,
        layer_index: int,
    ) -> None:
        super().__init__()
        assert config.moe is not None
        self.input_layernorm = hidden_norm(config, placement)
        self.self_attn = LlamaAttention(config, backend, placement, layer_index)
        self.post_attention_layernorm = hidden_norm(config, placement)
        self.block_sparse_moe = SparseMoE(
            config.hidden_size, config.moe, config.activation, placement
        )

    def forward(
        self,
        hidden: torch.Tensor,  # [T, H]
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        kv_cache: KVCache,
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:  # [T, H]
        attended = self.self_attn(self.input_layernorm(hidden), cos_sin, kv_cache, attn_metadata)
        normed, hidden = self.post_attention_layernorm.add_and_norm(attended, hidden)
        return hidden + self.block_sparse_moe(normed)


class MixtralForCausalLM(LlamaForCausalLM):
    @staticmethod
    def config_from_hf(hf: HfConfig) -> DecoderConfig:
        config = decoder_config_from_hf(hf)
        moe = MoEConfig(
            num_experts=int(hf["num_local_experts"]),
            top_k=int(hf["num_experts_per_tok"]),
            intermediate_size=config.intermediate_size,
        )
        return replace(config, moe=moe)

    @staticmethod
    def decoder_layer_class() -> type[nn.Module]:
        return MixtralDecoderLayer

    def checkpoint_layout(self) -> CheckpointLayout:
        assert self.config.moe is not None
        experts = moe_checkpoint_weights(self.config.moe.num_experts, _MOE_MODULE)
        ignored = frozenset({"lm_head.weight"}) if self.config.tie_word_embeddings else frozenset()
        return CheckpointLayout(packed=(*experts, *PACKED_WEIGHTS), ignored_names=ignored)
