"""Gemma 2: a decoder with "sandwich" norms, GELU-tanh, scaled embeddings and soft-caps.

    tokens -> embed * sqrt(H) -> L x (x + norm(attn(norm(x))), then x + norm(mlp(norm(x))))
           -> norm -> logits = cap * tanh(logits / cap)

Every RMSNorm scales by (1 + w); attention is scaled by query_pre_attn_scalar ** -0.5 and its
scores soft-capped; even layers attend within a sliding window, odd ones globally (read from
`layer_types`). Attention and MLP are Llama's modules; only the decoder layer differs. The LM
head is tied to the embedding.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ferrite_server.layers.attention.backend import AttentionBackend, AttentionMetadata
from ferrite_server.layers.placement import LayerPlacement
from ferrite_server.models.config import DecoderConfig, HfConfig, decoder_config_from_hf
from ferrite_server.models.interface import KVCache
from ferrite_server.models.llama import LlamaDecoderLayer, LlamaForCausalLM, hidden_norm


class GemmaDecoderLayer(LlamaDecoderLayer):
    """Norms before and after both attention and MLP (Gemma 2 and 3)."""

    def __init__(
        self,
        config: DecoderConfig,
        backend: AttentionBackend,
        placement: LayerPlacement,
        layer_index: int,
    ) -> None:
        super().__init__(config, backend, placement, layer_index)
        self.pre_feedforward_layernorm = hidden_norm(config, placement)
        self.post_feedforward_layernorm = hidden_norm(config, placement)

    def forward(
        self,
        hidden: torch.Tensor,  # [T, H]
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        kv_cache: KVCache,
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:  # [T, H]
        attended = self.self_attn(self.input_layernorm(hidden), cos_sin, kv_cache, attn_metadata)
        hidden = hidden + self.post_attention_layernorm(attended)
        transformed = self.mlp(self.pre_feedforward_layernorm(hidden), attn_metadata.lora)
        return hidden + self.post_feedforward_layernorm(transformed)


def gemma_config_from_hf(hf: HfConfig) -> DecoderConfig:
    """What Gemma 2 and 3 share beyond the Llama reading."""
    config = decoder_config_from_hf(hf)
    scalar = hf.get("query_pre_attn_scalar")
    final_cap, attn_cap = hf.get("final_logit_softcapping"), hf.get("attn_logit_softcapping")
    return replace(
        config,
        # Gemma configs omit tie_word_embeddings: transformers' default (tied) applies.
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        norm_weight_offset=1.0,
        embedding_multiplier=config.hidden_size**0.5,
        query_pre_attn_scalar=float(scalar) if scalar is not None else None,
        final_logit_softcap=float(final_cap) if final_cap is not None else None,
        attn_logit_softcap=float(attn_cap) if attn_cap is not None else None,
    )


class Gemma2ForCausalLM(LlamaForCausalLM):
    @staticmethod
    def config_from_hf(hf: HfConfig) -> DecoderConfig:
        return gemma_config_from_hf(hf)

    @staticmethod
    def decoder_layer_class() -> type[nn.Module]:
        return GemmaDecoderLayer
