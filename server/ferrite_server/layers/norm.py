"""RMSNorm as in Llama / Mistral / Qwen2: normalize in float32, scale in the model dtype."""

from __future__ import annotations

import torch
from torch import nn

from ferrite_server.layers.placement import LayerPlacement


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float, placement: LayerPlacement) -> None:
        super().__init__()
        self.eps = eps
        self.weight = placement.empty_parameter(hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, hidden] -> [T, hidden]
        # float32 statistics whatever the model dtype (as Hugging Face does), so bf16 models
        # keep their reference accuracy.
        x32 = x.float()
        variance = x32.pow(2).mean(-1, keepdim=True)
        normalized = x32 * torch.rsqrt(variance + self.eps)
        return self.weight * normalized.to(x.dtype)
