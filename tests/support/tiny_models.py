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
    GenerationConfig,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    Qwen2Config,
)

TinyFamily = Literal["llama", "mistral", "qwen2"]

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


def tiny_config(spec: TinyModelSpec) -> PretrainedConfig:
    common: dict[str, Any] = dict(
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=_INITIALIZER_RANGE,
        tie_word_embeddings=spec.tie_word_embeddings,
        bos_token_id=1,
        eos_token_id=TINY_EOS_TOKEN_ID,
        pad_token_id=0,
    )
    if spec.family == "mistral":
        # A window shorter than max_position_embeddings (the shard then serves 128 positions).
        return MistralConfig(**common, sliding_window=128)
    if spec.family == "qwen2":
        return Qwen2Config(**common, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
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


def write_tiny_model(model_dir: Path, spec: TinyModelSpec = TinyModelSpec()) -> Path:
    """Write a float32 random-weight checkpoint (deterministic for a given spec) to model_dir."""
    config = tiny_config(spec)
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=1, eos_token_id=list(TINY_GENERATION_EOS_TOKEN_IDS), pad_token_id=0
    )
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    max_shard_size = _SHARD_SIZE_BYTES if spec.sharded else "5GB"
    model.save_pretrained(model_dir, safe_serialization=True, max_shard_size=max_shard_size)
    return model_dir
