"""A checkpoint's Hugging Face `config.json` (+ `generation_config.json`) as typed config.

Handles both spellings transformers has used: `rope_theta` + `rope_scaling` (v4) and
`rope_parameters` (v5); `torch_dtype` (v4) and `dtype` (v5).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ferrite_server.engine.errors import UnsupportedModelError
from ferrite_server.layers.rotary import RopeConfig

HfConfig = dict[str, Any]

_SUPPORTED_ACTIVATIONS = ("silu",)


@dataclass(frozen=True)
class DecoderConfig:
    """A Llama-style decoder-only transformer (Llama, Mistral, Qwen2, SmolLM)."""

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


def _rope_config(hf: HfConfig) -> RopeConfig:
    params: dict[str, Any] = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = float(params.get("rope_theta") or hf.get("rope_theta") or 10000.0)
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if rope_type == "default":
        return RopeConfig(theta=theta)
    if rope_type == "linear":
        return RopeConfig(theta=theta, rope_type="linear", factor=float(params["factor"]))
    if rope_type == "llama3":
        return RopeConfig(
            theta=theta,
            rope_type="llama3",
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]),
        )
    raise UnsupportedModelError(
        f"rope scaling {rope_type!r} is not supported (supported: default, linear, llama3)"
    )


def decoder_config_from_hf(hf: HfConfig) -> DecoderConfig:
    """The Llama reading of a config.json; families adjust the result (see mistral / qwen2)."""
    activation = hf.get("hidden_act", "silu")
    if activation not in _SUPPORTED_ACTIVATIONS:
        raise UnsupportedModelError(f"activation {activation!r} is not supported")
    num_heads = int(hf["num_attention_heads"])
    hidden_size = int(hf["hidden_size"])
    attention_bias = bool(hf.get("attention_bias", False))
    return DecoderConfig(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=hidden_size,
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=num_heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
        head_dim=int(hf.get("head_dim") or hidden_size // num_heads),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope=_rope_config(hf),
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=attention_bias,
        o_bias=attention_bias,
        mlp_bias=bool(hf.get("mlp_bias", False)),
    )


def limit_to_sliding_window(config: DecoderConfig, sliding_window: int | None) -> DecoderConfig:
    """Serve at most `sliding_window` positions.

    Within the window, sliding-window attention equals full causal attention; beyond it the
    attention backends would differ from the model. Limiting the positions the shard admits
    keeps every answer exact until the backends learn windows.
    """
    if sliding_window is None or sliding_window >= config.max_position_embeddings:
        return config
    return replace(config, max_position_embeddings=int(sliding_window))


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
