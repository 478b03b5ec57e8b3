"""Tiny random-weight checkpoints written with Hugging Face transformers.

They exercise the real loading path (config.json + safetensors, written by
`save_pretrained(safe_serialization=True)`) in a fraction of a second, and transformers running
the same directory is the reference for every output.

    from tests.support.tiny_models import TinyModelSpec, write_tiny_model
    model_dir = write_tiny_model(tmp_path / "llama", TinyModelSpec(family="qwen2", seed=3))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GenerationConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    Phi3Config,
    PretrainedConfig,
    Qwen2Config,
    Qwen3Config,
    StableLmConfig,
)

TinyFamily = Literal[
    "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "mixtral",
    "gpt_neox", "stablelm",  # no ferrite model file: the transformers fallback serves them
]
# Shorter than most test prompts, so windowed layers differ from global ones.
TINY_SLIDING_WINDOW = 8

TINY_VOCAB_SIZE = 320
TINY_EOS_TOKEN_ID = 2
# generation_config.json adds a second EOS id (real checkpoints do this, e.g. Llama 3 chat).
TINY_GENERATION_EOS_TOKEN_IDS = (2, 5)
# Larger than transformers' 0.02 so that attention patterns (and so positions, caches and
# masks) visibly change the outputs.
_INITIALIZER_RANGE = 0.1
_SHARD_SIZE_BYTES = 100_000  # several safetensors shards for a ~0.5 MB model


@dataclass(frozen=True)
class TinyModelSpec:
    family: TinyFamily = "llama"
    seed: int = 0
    tie_word_embeddings: bool = False
    sharded: bool = False  # model-0000x-of-0000n.safetensors + model.safetensors.index.json
    llama3_rope: bool = False  # Llama 3.x `rope_scaling` {"rope_type": "llama3", ...}
    # Of 64 hidden features: 4 heads of 16 over 2 KV heads unless set (2 and 1: heads of 32).
    num_attention_heads: int = 4
    num_key_value_heads: int = 2


def tiny_config(spec: TinyModelSpec) -> PretrainedConfig:
    common: dict[str, Any] = dict(
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=256,
        initializer_range=_INITIALIZER_RANGE,
        tie_word_embeddings=spec.tie_word_embeddings,
        bos_token_id=1,
        eos_token_id=TINY_EOS_TOKEN_ID,
        pad_token_id=0,
    )
    if spec.family == "mistral":
        return MistralConfig(**common, sliding_window=TINY_SLIDING_WINDOW)
    if spec.family == "qwen2":
        return Qwen2Config(**common, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    if spec.family == "mixtral":
        # 4 experts, top-2, and a window shorter than the prompts.
        return MixtralConfig(**common, num_local_experts=4, num_experts_per_tok=2,
                             sliding_window=TINY_SLIDING_WINDOW)
    if spec.family == "gpt_neox":
        # Parallel residual, partial rotary, biases, LayerNorm: nothing like Llama.
        neox = {k: v for k, v in common.items() if k != "num_key_value_heads"}
        return GPTNeoXConfig(**neox, rotary_pct=0.5, use_parallel_residual=True)
    if spec.family == "stablelm":
        return StableLmConfig(**common, partial_rotary_factor=0.25, qk_layernorm=True,
                              use_qkv_bias=True)
    if spec.family in ("qwen3", "gemma2", "gemma3", "phi3"):
        return _newer_family_config(spec.family, common)
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    if spec.llama3_rope:
        rope = {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        }
    return LlamaConfig(**common, rope_parameters=rope)


def _newer_family_config(family: TinyFamily, common: dict[str, Any]) -> PretrainedConfig:
    """Three or four layers so windowed and global layers both occur; each family's own knobs
    set away from their defaults so that getting one wrong changes the tokens."""
    common = {**common, "num_hidden_layers": 4, "head_dim": 16}
    if family == "qwen3":
        # Layers 0-1 global, 2-3 windowed; YaRN-scaled RoPE.
        rope = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                "original_max_position_embeddings": 64}
        return Qwen3Config(**common, use_sliding_window=True, sliding_window=TINY_SLIDING_WINDOW,
                           max_window_layers=2, rope_parameters=rope)
    if family == "gemma2":
        # Soft-caps small enough to bend these random weights' scores and logits.
        return Gemma2Config(**common, hidden_activation="gelu_pytorch_tanh",
                            query_pre_attn_scalar=24, sliding_window=TINY_SLIDING_WINDOW,
                            attn_logit_softcapping=1.5, final_logit_softcapping=4.0)
    if family == "gemma3":
        rope = {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 2.0},
        }
        kinds = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]
        return Gemma3TextConfig(**common, query_pre_attn_scalar=16,
                                sliding_window=TINY_SLIDING_WINDOW, layer_types=kinds,
                                rope_parameters=rope)
    # phi3: half the head rotated; longrope with a 2-token original context, so every prompt
    # (and every chunk of one) runs on the long factors and their attention factor. (A sequence
    # crossing the original context mid-generation makes transformers recompute its whole
    # cache with the long factors; ferrite keeps the cached keys, see layers/rope_scaling.py.)
    num_factors = common["head_dim"] // 4
    rope = {
        "rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
        "original_max_position_embeddings": 2,
        "short_factor": [1.0 + 0.1 * i for i in range(num_factors)],
        "long_factor": [2.0 + 0.5 * i for i in range(num_factors)],
    }
    return Phi3Config(**common, sliding_window=12, rope_parameters=rope,
                      original_max_position_embeddings=2)


# Families whose tiny checkpoints keep transformers' unit norm weights (older tests depend on
# the exact tokens these produce, e.g. the prefix-cache penalty test's choice of prompt).
_UNIT_NORM_FAMILIES = ("llama", "mistral", "qwen2")


@torch.no_grad()
def _perturb_norm_weights(model: torch.nn.Module) -> None:
    # transformers initializes norm weights to 1 (Gemma: 0, meaning 1 + 0); random ones make a
    # wrong norm variant (w vs 1 + w, a missing q / k norm) change the outputs.
    for name, param in model.named_parameters():
        if "norm" in name:
            param.add_(torch.randn_like(param) * 0.2)


def write_tiny_model(model_dir: Path, spec: TinyModelSpec = TinyModelSpec()) -> Path:
    """Write a float32 random-weight checkpoint (deterministic for a given spec) to model_dir."""
    config = tiny_config(spec)
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if spec.family not in _UNIT_NORM_FAMILIES:
        _perturb_norm_weights(model)
    model.generation_config = GenerationConfig(
        bos_token_id=1, eos_token_id=list(TINY_GENERATION_EOS_TOKEN_IDS), pad_token_id=0
    )
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    max_shard_size = _SHARD_SIZE_BYTES if spec.sharded else "5GB"
    model.save_pretrained(model_dir, safe_serialization=True, max_shard_size=max_shard_size)
    return model_dir
