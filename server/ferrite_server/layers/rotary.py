"""Rotary position embedding (RoPE), "rotate half" layout as in Hugging Face Llama.

cos / sin are computed per step from the positions tensor (a few flops per token), so mixed
batches with arbitrary positions need no cache and no index bookkeeping.

Frequency scaling variants:
- "default": inv_freq[i] = theta ** (-2i / dim)
- "linear":  inv_freq / factor (positions interpolated)
- "llama3":  Llama 3.1+: low frequencies divided by `factor`, high ones kept, a smooth blend
             between the two wavelength bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

RopeType = Literal["default", "linear", "llama3"]


@dataclass(frozen=True)
class RopeConfig:
    theta: float = 10000.0
    rope_type: RopeType = "default"
    factor: float = 1.0
    # llama3 only:
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


def _llama3_inv_freq(inv_freq: torch.Tensor, config: RopeConfig) -> torch.Tensor:
    old_context_len = config.original_max_position_embeddings
    low_freq_wavelen = old_context_len / config.low_freq_factor
    high_freq_wavelen = old_context_len / config.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths (low frequencies) are stretched by `factor`; short ones are kept.
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / config.factor, inv_freq)
    smooth = (old_context_len / wavelen - config.low_freq_factor) / (
        config.high_freq_factor - config.low_freq_factor
    )
    blended = (1 - smooth) * scaled / config.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, blended, scaled)


def rope_inv_freq(head_dim: int, config: RopeConfig) -> torch.Tensor:  # [head_dim / 2] float32
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (config.theta**exponents)
    if config.rope_type == "linear":
        return inv_freq / config.factor
    if config.rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, config)
    return inv_freq


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class RotaryEmbedding(nn.Module):
    inv_freq: torch.Tensor  # [head_dim / 2] float32 (a non-persistent buffer)

    def __init__(self, head_dim: int, config: RopeConfig, device: torch.device) -> None:
        super().__init__()
        inv_freq = rope_inv_freq(head_dim, config).to(device)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def cos_sin(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:  # positions [T] -> cos, sin [T, head_dim]
        freqs = positions.float()[:, None] * self.inv_freq[None, :]  # [T, head_dim / 2]
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:  # x [T, heads, head_dim], cos / sin [T, head_dim] -> [T, heads, head_dim]
    return x * cos[:, None, :] + _rotate_half(x) * sin[:, None, :]


def rotate_query_key(
    query: torch.Tensor,  # [T, num_heads, head_dim]
    key: torch.Tensor,  # [T, num_kv_heads, head_dim]
    cos: torch.Tensor,  # [T, head_dim]
    sin: torch.Tensor,  # [T, head_dim]
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE on query and key: one fused in-place kernel on CUDA (kernels/rotary.py), the torch
    expression elsewhere. The inputs may be views of a fused QKV output that is not used again."""
    if query.is_cuda:
        from ferrite_server.kernels.rotary import rotate_query_key_

        rotate_query_key_(query, key, cos, sin)
        return query, key
    return apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
