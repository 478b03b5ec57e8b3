"""Mistral: the Llama architecture with an explicit head_dim and a sliding attention window.

Reuses Llama's modules and config reading: Mistral 7B v0.1 attends within a 4096-token window
on every layer (`sliding_window`, read into each layer's `LayerAttention`); later versions set
it to null. The whole context is served: the attention backends apply the window.
"""

from __future__ import annotations

from ferrite_server.models.llama import LlamaForCausalLM


class MistralForCausalLM(LlamaForCausalLM):
    pass
