"""Qwen2 / Qwen2.5: the Llama architecture with biases on the q / k / v projections.

Reuses Llama's modules; only the config reading differs: `qkv_bias` on, no bias on o_proj or
the MLP. A sliding window applies only when `use_sliding_window` is set, and then only to the
layers from `max_window_layers` on (transformers 5 writes this as `layer_types`).
"""

from __future__ import annotations

from dataclasses import replace

from ferrite_server.models.config import (
    SLIDING_ATTENTION,
    DecoderConfig,
    HfConfig,
    decoder_config_from_hf,
    layer_attention_from_hf,
)
from ferrite_server.models.llama import LlamaForCausalLM


def qwen_layer_kinds(hf: HfConfig) -> list[str]:
    """Each layer's kind: transformers' `layer_types` when written, else the v4 rule."""
    num_layers = int(hf["num_hidden_layers"])
    if hf.get("layer_types"):
        return list(hf["layer_types"])
    first_windowed = int(hf.get("max_window_layers", num_layers))
    windowed = bool(hf.get("use_sliding_window")) and hf.get("sliding_window") is not None
    return [
        SLIDING_ATTENTION if windowed and index >= first_windowed else "full_attention"
        for index in range(num_layers)
    ]


def qwen_config_from_hf(hf: HfConfig) -> DecoderConfig:
    config = decoder_config_from_hf(hf)
    layers = layer_attention_from_hf(hf, config.num_layers, qwen_layer_kinds(hf))
    return replace(config, layer_attention=layers)


class Qwen2ForCausalLM(LlamaForCausalLM):
    @staticmethod
    def config_from_hf(hf: HfConfig) -> DecoderConfig:
        return replace(qwen_config_from_hf(hf), qkv_bias=True, o_bias=False)
