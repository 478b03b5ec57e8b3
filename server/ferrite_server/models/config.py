"""A checkpoint's Hugging Face `config.json` (+ `generation_config.json`) as typed config.

Handles both spellings transformers has used: `rope_theta` + `rope_scaling` (v4) and
`rope_parameters` (v5); `torch_dtype` (v4) and `dtype` (v5).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferrite_server.engine.errors import UnsupportedModelError
from ferrite_server.layers.activation import Activation
from ferrite_server.layers.moe import MoEConfig
from ferrite_server.layers.rope_scaling import RopeConfig
from ferrite_server.models.rope_config import rope_config_from_hf

HfConfig = dict[str, Any]

# transformers' names for the activations the gated MLP supports.
_ACTIVATIONS: dict[str, Activation] = {
    "silu": "silu",
    "swish": "silu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_tanh": "gelu_tanh",
}
SLIDING_ATTENTION = "sliding_attention"


@dataclass(frozen=True)
class LayerAttention:
    """What one layer's attention differs in: its window and its rotary embedding.

    `sliding_window_tokens` W: a query at position i sees keys j with i - W < j <= i (W keys,
    itself included), transformers' sliding-window mask; None: every earlier key.
    """

    rope: RopeConfig
    sliding_window_tokens: int | None = None


@dataclass(frozen=True)
class DecoderConfig:
    """A decoder-only transformer as the shared layers build it.

    The Llama reading fills the first block; the fields after it are what other families change
    (defaults: Llama's behaviour).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope: RopeConfig
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # bias on the q / k / v projections
    o_bias: bool = False  # bias on the output projection
    mlp_bias: bool = False
    activation: Activation = "silu"
    # Gemma's RMSNorm scales by (1 + w): its checkpoints store w - 1, here added back as offset.
    norm_weight_offset: float = 0.0
    qk_norm: bool = False  # RMSNorm over each head of q and k before RoPE (Qwen3, Gemma 3)
    embedding_multiplier: float = 1.0  # Gemma: sqrt(hidden_size)
    final_logit_softcap: float | None = None  # logits = cap * tanh(logits / cap) (Gemma 2)
    attn_logit_softcap: float | None = None  # the same on attention scores (Gemma 2)
    # Softmax scale is query_pre_attn_scalar ** -0.5 (Gemma); None: head_dim ** -0.5.
    query_pre_attn_scalar: float | None = None
    # One entry per layer; empty: every layer attends fully with `rope`.
    layer_attention: tuple[LayerAttention, ...] = ()
    moe: MoEConfig | None = None  # every MLP is a mixture of experts (Mixtral)

    @property
    def attention_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def attention_of(self, layer_index: int) -> LayerAttention:
        if not self.layer_attention:
            return LayerAttention(rope=self.rope)
        return self.layer_attention[layer_index]


def read_hf_config(model_dir: Path) -> HfConfig:
    path = model_dir / "config.json"
    if not path.is_file():
        raise UnsupportedModelError(f"{model_dir} has no config.json")
    config: HfConfig = json.loads(path.read_text())
    return config


def architecture_of(hf: HfConfig) -> str:
    architectures = hf.get("architectures") or []
    if not architectures:
        raise UnsupportedModelError("config.json names no `architectures`")
    return str(architectures[0])


def checkpoint_dtype_name(hf: HfConfig) -> str | None:
    """The dtype the checkpoint was saved in ("bfloat16", ...), when config.json says."""
    name = hf.get("dtype") or hf.get("torch_dtype")
    return str(name) if name else None


def activation_of(hf: HfConfig) -> Activation:
    # Gemma calls it hidden_activation (and some Gemma 1 configs still say hidden_act: gelu).
    name = str(hf.get("hidden_activation") or hf.get("hidden_act") or "silu")
    activation = _ACTIVATIONS.get(name)
    if activation is None:
        raise UnsupportedModelError(
            f"activation {name!r} is not supported (supported: {', '.join(_ACTIVATIONS)})"
        )
    return activation


def decoder_config_from_hf(hf: HfConfig) -> DecoderConfig:
    """The Llama reading of a config.json; families adjust the result (see their files)."""
    num_heads = int(hf["num_attention_heads"])
    hidden_size = int(hf["hidden_size"])
    attention_bias = bool(hf.get("attention_bias", False))
    num_layers = int(hf["num_hidden_layers"])
    return DecoderConfig(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden_size,
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
        head_dim=int(hf.get("head_dim") or hidden_size // num_heads),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope=rope_config_from_hf(hf),
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=attention_bias,
        o_bias=attention_bias,
        mlp_bias=bool(hf.get("mlp_bias", False)),
        activation=activation_of(hf),
        layer_attention=layer_attention_from_hf(hf, num_layers),
    )


def layer_attention_from_hf(
    hf: HfConfig, num_layers: int, layer_kinds: list[str] | None = None
) -> tuple[LayerAttention, ...]:
    """Per layer: its window and rope. `layer_types` (transformers 5) names each layer's kind;
    without it a `sliding_window` applies to every layer (Mistral, Phi-3), unless the family
    passes `layer_kinds` (Qwen2's use_sliding_window / max_window_layers)."""
    window = hf.get("sliding_window")
    kinds = layer_kinds or hf.get("layer_types")
    if kinds is None:
        kinds = [SLIDING_ATTENTION if window else "full_attention"] * num_layers
    if len(kinds) != num_layers:
        raise UnsupportedModelError(f"layer_types names {len(kinds)} layers, not {num_layers}")
    ropes = {kind: rope_config_from_hf(hf, kind) for kind in set(kinds)}
    return tuple(
        LayerAttention(
            rope=ropes[kind],
            sliding_window_tokens=int(window) if kind == SLIDING_ATTENTION and window else None,
        )
        for kind in kinds
    )


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(item) for item in value]


def read_eos_token_ids(model_dir: Path, hf: HfConfig) -> tuple[int, ...]:
    """EOS ids of config.json and generation_config.json (each an int or a list), deduplicated."""
    ids = _as_id_list(hf.get("eos_token_id"))
    generation_path = model_dir / "generation_config.json"
    if generation_path.is_file():
        ids += _as_id_list(json.loads(generation_path.read_text()).get("eos_token_id"))
    return tuple(dict.fromkeys(ids))
