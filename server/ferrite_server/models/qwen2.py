"""Qwen2 / Qwen2.5: the Llama architecture with biases on the q / k / v projections.

Reuses Llama's modules; only the config reading differs: `qkv_bias` on, no bias on o_proj or
the MLP, and a sliding window only when `use_sliding_window` is set (then the shard serves at
most that many positions, see `limit_to_sliding_window`).
"""

from __future__ import annotations

from dataclasses import replace

from ferrite_server.models.config import (
    DecoderConfig,
    HfConfig,
    decoder_config_from_hf,
    limit_to_sliding_window,
)
from ferrite_server.models.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    @staticmethod
    def config_from_hf(hf: HfConfig) -> DecoderConfig:
        config = replace(decoder_config_from_hf(hf), qkv_bias=True, o_bias=False)
        sliding_window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
        return limit_to_sliding_window(config, sliding_window)
