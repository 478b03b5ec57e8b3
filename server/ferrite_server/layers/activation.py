"""Gated activations over fused projections: act(gate) * up."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Activation = Literal["silu", "gelu_tanh"]



class SiluAndMul(nn.Module):
    """silu(gate) * up, where the input is the fused [gate | up] projection (Llama, Qwen)."""

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:  # [T, 2 * I] -> [T, I]
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up


class GeluTanhAndMul(nn.Module):
    """gelu(gate) (tanh approximation) * up (Gemma's `gelu_pytorch_tanh`)."""

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:  # [T, 2 * I] -> [T, I]
        gate, up = gate_up.chunk(2, dim=-1)
        return F.gelu(gate, approximate="tanh") * up


def gated_activation(activation: Activation) -> nn.Module:
    return GeluTanhAndMul() if activation == "gelu_tanh" else SiluAndMul()
