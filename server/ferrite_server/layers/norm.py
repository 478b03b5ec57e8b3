"""RMSNorm as in Llama / Mistral / Qwen2: normalize in float32, scale in the model dtype.

Gemma's variant scales by (1 + w) in float32 (its checkpoints store w around 0): the same
layer with `weight_offset=1.0`, added to the weight once after loading, so forward is the
Llama expression either way (in float32 the products are the same; Gemma's float32 scaling
only differs in half precision by one rounding).

On CUDA the fused Triton kernel (kernels/rms_norm.py) replaces the torch expression — same
numerics, one launch instead of ~8; on the CPU the torch expression is the implementation.
"""

from __future__ import annotations

import torch
from torch import nn

from ferrite_server.layers.placement import LayerPlacement
from ferrite_server.weights import ShardId, attach_weight_loader, copy_checked


class RMSNorm(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        eps: float,
        placement: LayerPlacement,
        weight_offset: float = 0.0,
    ) -> None:
        super().__init__()
        self.eps = eps
        self.weight_offset = weight_offset
        self.weight = placement.empty_parameter(hidden_size)
        if weight_offset:
            attach_weight_loader(self.weight, self._load_with_offset)

    def _load_with_offset(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: ShardId) -> None:
        # (1 + w) computed in float32 before the cast to the model dtype, as Gemma does.
        copy_checked(param.data, loaded.float() + self.weight_offset, "norm weight")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., hidden] -> [..., hidden]
        if x.is_cuda:
            from ferrite_server.kernels.rms_norm import rms_norm

            rows = x.reshape(-1, x.shape[-1])  # q / k heads: one row per (token, head)
            return rms_norm(rows, self.weight, self.eps).view(x.shape)
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
        # (dtype checks in Python: a no-op `.float()` / `.to()` is still a dispatch, and a CPU
        # decode step runs this 2 x layers + 1 times.)
        x32 = x if x.dtype == torch.float32 else x.float()
        variance = x32.pow(2).mean(-1, keepdim=True)
        normalized = x32 * torch.rsqrt(variance.add_(self.eps))
        if normalized.dtype != x.dtype:
            normalized = normalized.to(x.dtype)
        return self.weight * normalized
