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

from ferrite_server.layers.lora import LoraBatch
from ferrite_server.layers.moe import MoEConfig, SparseMoE, moe_checkpoint_weights
from ferrite_server.layers.placement import LayerPlacement
from ferrite_server.models.config import DecoderConfig, HfConfig, decoder_config_from_hf
from ferrite_server.models.llama import (
    PACKED_WEIGHTS,
    LlamaDecoderLayer,
    LlamaForCausalLM,
)
from ferrite_server.weights import CheckpointLayout

_MOE_MODULE = "block_sparse_moe"


class MixtralDecoderLayer(LlamaDecoderLayer):
    """Llama's layer with the experts as its MLP (`block_sparse_moe`, the checkpoint's name)."""

    def add_feed_forward(self, config: DecoderConfig, placement: LayerPlacement) -> None:
        assert config.moe is not None
        self.block_sparse_moe = SparseMoE(
            config.hidden_size, config.moe, config.activation, placement
        )

    def feed_forward(
        self, normed: torch.Tensor, lora: LoraBatch | None = None
    ) -> torch.Tensor:  # [T, H] -> [T, H]; no LoRA on experts (lora/attach.py refuses it)
        return self.block_sparse_moe(normed)


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
