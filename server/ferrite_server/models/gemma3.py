"""Gemma 3 (text): Gemma 2's layer with q / k norms, two RoPEs and no soft-caps.

Sliding layers (five of every six by default, `layer_types`) use a local RoPE base (10k) and
global layers their own (1M, possibly scaled); both are `LayerAttention` entries. The q / k
norms are Gemma norms ((1 + w)). `Gemma3ForCausalLM` is the text-only checkpoint (e.g.
Gemma 3 270M / 1B); the multimodal `Gemma3ForConditionalGeneration` is not served here.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from ferrite_server.models.config import DecoderConfig, HfConfig
from ferrite_server.models.gemma2 import GemmaDecoderLayer, gemma_config_from_hf
from ferrite_server.models.llama import LlamaForCausalLM


class Gemma3ForCausalLM(LlamaForCausalLM):
    @staticmethod
    def config_from_hf(hf: HfConfig) -> DecoderConfig:
        return replace(gemma_config_from_hf(hf), qk_norm=True)

    @staticmethod
    def decoder_layer_class() -> type[nn.Module]:
        return GemmaDecoderLayer
