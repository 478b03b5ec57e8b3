"""Mistral: the Llama architecture with an explicit head_dim and a sliding attention window.

Reuses Llama's modules; only the config reading differs. Mistral 7B v0.1 attends within a
4096-token window; later versions set `sliding_window` to null. Until the attention backends
take a window, the shard serves at most `sliding_window` positions, where full causal attention
and windowed attention agree (see `limit_to_sliding_window`).
"""

from __future__ import annotations

from ferrite_server.models.config import (
    DecoderConfig,
    HfConfig,
    decoder_config_from_hf,
    limit_to_sliding_window,
)
from ferrite_server.models.llama import LlamaForCausalLM


class MistralForCausalLM(LlamaForCausalLM):
    @staticmethod
    def config_from_hf(hf: HfConfig) -> DecoderConfig:
        return limit_to_sliding_window(decoder_config_from_hf(hf), hf.get("sliding_window"))
