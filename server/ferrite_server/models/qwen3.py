"""Qwen3 (dense): the Llama architecture with an RMSNorm over each head of q and k before RoPE.

No q / k / v biases (unlike Qwen2), an explicit head_dim, and Qwen2's optional sliding window
on the layers from `max_window_layers` on. Reuses Llama's modules (`qk_norm`).
"""

from __future__ import annotations

from dataclasses import replace

from ferrite_server.models.config import DecoderConfig, HfConfig
from ferrite_server.models.llama import LlamaForCausalLM
from ferrite_server.models.qwen2 import qwen_config_from_hf


class Qwen3ForCausalLM(LlamaForCausalLM):
    @staticmethod
    def config_from_hf(hf: HfConfig) -> DecoderConfig:
        return replace(qwen_config_from_hf(hf), qk_norm=True)
