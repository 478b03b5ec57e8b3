"""RMSNorm as in Llama / Mistral / Qwen2: normalize in float32, scale in the model dtype.

On CUDA the fused Triton kernel (kernels/rms_norm.py) replaces the torch expression — same
numerics, one launch instead of ~8; on the CPU the torch expression is the implementation.
"""

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
        if x.is_cuda:
            from ferrite_server.kernels.rms_norm import rms_norm

            return rms_norm(x, self.weight, self.eps)
        return self._torch_norm(x)

    def add_and_norm(
        self, x: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:  # x, residual [T, hidden] -> (normed, x + residual)
        """The norm of `x + residual`, and that sum (the next residual), fused on CUDA."""
        if x.is_cuda:
            from ferrite_server.kernels.rms_norm import add_rms_norm

            return add_rms_norm(x, residual, self.weight, self.eps)
        summed = x + residual
        return self._torch_norm(summed), summed

    def _torch_norm(self, x: torch.Tensor) -> torch.Tensor:
        # float32 statistics whatever the model dtype (as Hugging Face does), so bf16 models
        # keep their reference accuracy.
        x32 = x.float()
        variance = x32.pow(2).mean(-1, keepdim=True)
        normalized = x32 * torch.rsqrt(variance + self.eps)
        return self.weight * normalized.to(x.dtype)
