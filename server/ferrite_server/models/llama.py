"""Llama 2 / 3 / 3.x (and SmolLM, which is Llama): the reference decoder family.

    tokens [T] -> embed -> L x (RMSNorm -> attention -> +residual -> RMSNorm -> MLP -> +residual)
                        -> RMSNorm -> hidden [T, H]   (logits on request: LM head, float32)

Mistral, Qwen2 / Qwen3 and Phi-3 reuse these classes with a different config reading (see their
files); Gemma 2 / 3 reuse the attention and MLP inside their own decoder layer. What the
families differ in is `DecoderConfig`: biases, head_dim, activation, q/k norms, per-layer
attention (window, RoPE), attention scale and soft-caps, embedding scale, tied heads.
Module names mirror Hugging Face's so checkpoint tensor names map one to one, except the fused
`qkv_proj` and `gate_up_proj` (see `checkpoint_layout`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ferrite_server.layers.activation import gated_activation
from ferrite_server.layers.attention.backend import (
    AttentionBackend,
    AttentionMetadata,
    AttentionVariant,
)
from ferrite_server.layers.embedding import LMHead, VocabEmbedding
from ferrite_server.layers.lora import LoraBatch
from ferrite_server.layers.linear import (
    AttentionHeads,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from ferrite_server.layers.norm import RMSNorm
from ferrite_server.layers.placement import LayerPlacement
from ferrite_server.layers.rotary import rotate_fused_query_key, rotate_query_key
from ferrite_server.models.config import DecoderConfig, HfConfig, decoder_config_from_hf
from ferrite_server.models.layer_rotaries import LayerRotaries
from ferrite_server.models.interface import KVCache
from ferrite_server.models.native_decode import NATIVE_DECODE_MAX_ROWS, NativeDecodeStack
from ferrite_server.weights import CheckpointLayout, PackedWeight

PACKED_WEIGHTS = (
    PackedWeight(".q_proj.", ".qkv_proj.", "q"),
    PackedWeight(".k_proj.", ".qkv_proj.", "k"),
    PackedWeight(".v_proj.", ".qkv_proj.", "v"),
    PackedWeight(".gate_proj.", ".gate_up_proj.", 0),
    PackedWeight(".up_proj.", ".gate_up_proj.", 1),
)


class LlamaAttention(nn.Module):
    def __init__(
        self,
        config: DecoderConfig,
        backend: AttentionBackend,
        placement: LayerPlacement,
        layer_index: int = 0,
    ) -> None:
        super().__init__()
        heads = AttentionHeads(config.num_heads, config.num_kv_heads, config.head_dim)
        self.qkv_proj = QKVParallelLinear(config.hidden_size, heads, config.qkv_bias, placement)
        # This rank's heads (tensor parallelism; all of them on one rank).
        self.num_heads = self.qkv_proj.partition.num_heads
        self.num_kv_heads = self.qkv_proj.partition.num_kv_heads
        self.head_dim = config.head_dim
        self.scale = config.attention_scale
        self.variant = AttentionVariant(
            sliding_window_tokens=config.attention_of(layer_index).sliding_window_tokens,
            logit_softcap=config.attn_logit_softcap,
        )
        self.backend = backend
        if config.qk_norm:  # per head, before RoPE (Qwen3, Gemma 3)
            eps, offset = config.rms_norm_eps, config.norm_weight_offset
            self.q_norm = RMSNorm(config.head_dim, eps, placement, offset)
            self.k_norm = RMSNorm(config.head_dim, eps, placement, offset)
        else:
            self.q_norm = self.k_norm = None
        self.o_proj = RowParallelLinear(
            config.num_heads * config.head_dim, config.hidden_size, config.o_bias, placement
        )

    def forward(
        self,
        hidden: torch.Tensor,  # [T, H]
        cos_sin: tuple[torch.Tensor, torch.Tensor],  # [T, head_dim] each
        kv_cache: KVCache,
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:  # [T, H]
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        qkv = self.qkv_proj(hidden, attn_metadata.lora)  # [T, q_size + 2 * kv_size]
        cos, sin = cos_sin
        if self.q_norm is None and not qkv.is_cuda:
            # CPU: q and k rotated in one pass (fewer operator calls per layer).
            query, key = rotate_fused_query_key(
                qkv[:, : q_size + kv_size], self.num_heads, self.head_dim, cos, sin
            )
            value = qkv[:, q_size + kv_size :]
        else:
            query, key, value = qkv.split([q_size, kv_size, kv_size], dim=-1)
            query = query.view(-1, self.num_heads, self.head_dim)  # [T, heads, head_dim]
            key = key.view(-1, self.num_kv_heads, self.head_dim)
            if self.q_norm is not None and self.k_norm is not None:
                query, key = self.q_norm(query), self.k_norm(key)
            query, key = rotate_query_key(query, key, cos, sin)
        value = value.view(-1, self.num_kv_heads, self.head_dim)
        key_cache, value_cache = kv_cache
        self.backend.write_kv(key, value, key_cache, value_cache, attn_metadata.slot_mapping)
        attended = self.backend.forward(
            query, key_cache, value_cache, attn_metadata, self.scale, self.variant
        )
        # [T, heads * head_dim] -> [T, H]
        return self.o_proj(attended.flatten(1), attn_metadata.lora)


class LlamaMLP(nn.Module):
    def __init__(self, config: DecoderConfig, placement: LayerPlacement) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(
            config.hidden_size,
            (config.intermediate_size, config.intermediate_size),
            config.mlp_bias,
            placement,
        )
        self.act = gated_activation(config.activation)
        self.down_proj = RowParallelLinear(
            config.intermediate_size, config.hidden_size, config.mlp_bias, placement
        )

    def forward(
        self, hidden: torch.Tensor, lora: LoraBatch | None = None
    ) -> torch.Tensor:  # [T, H] -> [T, H]
        gated = self.act(self.gate_up_proj(hidden, lora))  # via [T, 2I] -> [T, I]
        return self.down_proj(gated, lora)


def hidden_norm(config: DecoderConfig, placement: LayerPlacement) -> RMSNorm:
    return RMSNorm(config.hidden_size, config.rms_norm_eps, placement, config.norm_weight_offset)


class LlamaDecoderLayer(nn.Module):
    def __init__(
        self,
        config: DecoderConfig,
        backend: AttentionBackend,
        placement: LayerPlacement,
        layer_index: int,
    ) -> None:
        super().__init__()
        self.input_layernorm = hidden_norm(config, placement)
        self.self_attn = LlamaAttention(config, backend, placement, layer_index)
        self.post_attention_layernorm = hidden_norm(config, placement)
        self.add_feed_forward(config, placement)

    def add_feed_forward(self, config: DecoderConfig, placement: LayerPlacement) -> None:
        """The MLP, under the name the checkpoint uses (a family with another MLP overrides
        this and `feed_forward`, e.g. Mixtral's experts)."""
        self.mlp = LlamaMLP(config, placement)

    def feed_forward(
        self, normed: torch.Tensor, lora: LoraBatch | None = None
    ) -> torch.Tensor:  # [T, H] -> [T, H]
        return self.mlp(normed, lora)

    def forward(
        self,
        hidden: torch.Tensor,  # [T, H]
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        kv_cache: KVCache,
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:  # [T, H]
        attended = self.self_attn(self.input_layernorm(hidden), cos_sin, kv_cache, attn_metadata)
        normed, hidden = self.post_attention_layernorm.add_and_norm(attended, hidden)
        return hidden + self.feed_forward(normed, attn_metadata.lora)


class LlamaModel(nn.Module):
    def __init__(
        self,
        config: DecoderConfig,
        backend: AttentionBackend,
        placement: LayerPlacement,
        layer_class: type[nn.Module] = LlamaDecoderLayer,
    ) -> None:
        super().__init__()
        self.embedding_multiplier = config.embedding_multiplier
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size, placement)
        self.rotary_emb = LayerRotaries(config, placement.device)
        self.layers = nn.ModuleList(
            layer_class(config, backend, placement, index) for index in range(config.num_layers)
        )
        self.norm = hidden_norm(config, placement)
        # CPU bfloat16: steps of decode tokens in one native call (models/native_decode.py);
        # set after loading by `enable_native_cpu_decode`, None: the Python layers always.
        self.native_decode: NativeDecodeStack | None = None

    def forward(
        self,
        input_ids: torch.Tensor,  # [T]
        positions: torch.Tensor,  # [T]
        kv_caches: list[KVCache],
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:  # [T, H]
        hidden = self.embed_tokens(input_ids)
        if self.embedding_multiplier != 1.0:  # Gemma: sqrt(hidden), rounded to the dtype
            hidden = hidden * torch.tensor(self.embedding_multiplier, dtype=hidden.dtype)
        # One cos / sin per distinct RoPE (Gemma 3: global and local), shared by their layers.
        cos_sins = self.rotary_emb.cos_sin_per_layer(positions, hidden.dtype, attn_metadata)
        native = self.native_decode
        if native is not None and native.applies(hidden, attn_metadata):
            return self.norm(native.forward(hidden, cos_sins[0], kv_caches, attn_metadata))
        for layer, cos_sin, kv_cache in zip(self.layers, cos_sins, kv_caches, strict=True):
            hidden = layer(hidden, cos_sin, kv_cache, attn_metadata)
        return self.norm(hidden)


class LlamaForCausalLM(nn.Module):
    def __init__(
        self, config: DecoderConfig, backend: AttentionBackend, placement: LayerPlacement
    ) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config, backend, placement, self.decoder_layer_class())
        self.lm_head = LMHead(config.vocab_size, config.hidden_size, placement)
        if config.tie_word_embeddings:
            self.lm_head.tie_to(self.model.embed_tokens)

    @staticmethod
    def config_from_hf(hf: HfConfig) -> DecoderConfig:
        return decoder_config_from_hf(hf)

    @staticmethod
    def decoder_layer_class() -> type[nn.Module]:
        return LlamaDecoderLayer

    def forward(
        self,
        input_ids: torch.Tensor,  # [T] int64
        positions: torch.Tensor,  # [T] int64
        kv_caches: list[KVCache],
        attn_metadata: AttentionMetadata,
    ) -> torch.Tensor:  # [T, H]
        return self.model(input_ids, positions, kv_caches, attn_metadata)

    def enable_native_cpu_decode(self, kernel_dir: Path) -> bool:
        """Run CPU steps of decode tokens natively where this model allows it (after its
        weights are loaded and quantized); False: it keeps the Python layers."""
        self.model.native_decode = NativeDecodeStack.build(self.model, self.lm_head, kernel_dir)
        return self.model.native_decode is not None

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [N, H] -> [N, V] float32
        native = self.model.native_decode
        if native is not None and hidden.shape[0] <= NATIVE_DECODE_MAX_ROWS:
            logits = native.logits(hidden)
        else:
            logits = self.lm_head(hidden)
        cap = self.config.final_logit_softcap
        if cap is not None:  # Gemma 2: cap * tanh(logits / cap)
            logits = torch.tanh(logits / cap) * cap
        return logits

    def checkpoint_layout(self) -> CheckpointLayout:
        # A tied checkpoint may still carry lm_head.weight (a copy of the embedding).
        ignored = frozenset({"lm_head.weight"}) if self.config.tie_word_embeddings else frozenset()
        return CheckpointLayout(packed=PACKED_WEIGHTS, ignored_names=ignored)
