"""Rotary position embedding (RoPE), "rotate half" layout as in Hugging Face Llama.

cos / sin are computed per step from the positions tensor (a few flops per token), so mixed
batches with arbitrary positions need no cache and no index bookkeeping.

Frequency scaling variants (linear, dynamic NTK, YaRN, llama3, longrope) live in
layers/rope_scaling.py. Two of them depend on each sequence's current length (dynamic NTK,
longrope): then cos / sin are computed per token from its sequence's context length, which is
what transformers does for one sequence (it recomputes the frequencies from the longest
position of each forward). Partial rotary (Phi-3 / Phi-4-mini): only the first `rotary_dim`
features of each head are rotated, the rest pass through.
"""

from __future__ import annotations

import torch
from torch import nn

from ferrite_server.layers.rope_scaling import RopeConfig, rope_inv_freq

__all__ = [
    "RopeConfig",
    "RotaryEmbedding",
    "apply_rotary",
    "rotate_fused_query_key",
    "rotate_query_key",
]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class RotaryEmbedding(nn.Module):
    inv_freq: torch.Tensor  # [rotary_dim / 2] float32 (a non-persistent buffer)

    def __init__(self, head_dim: int, config: RopeConfig, device: torch.device) -> None:
        super().__init__()
        self.config = config
        self.rotary_dim = config.rotary_dim(head_dim)
        inv_freq, self.attention_factor = rope_inv_freq(self.rotary_dim, config)
        self.register_buffer("inv_freq", inv_freq.to(device), persistent=False)

    def cos_sin(
        self,
        positions: torch.Tensor,  # [T]
        dtype: torch.dtype,
        context_lens: torch.Tensor | None = None,  # [T]: each token's sequence length this step
    ) -> tuple[torch.Tensor, torch.Tensor]:  # cos, sin [T, rotary_dim]
        if self.config.depends_on_length and context_lens is not None:
            inv_freq = self._per_token_inv_freq(context_lens)  # [T, rotary_dim / 2]
            freqs = positions.float()[:, None] * inv_freq
        else:
            freqs = positions.float()[:, None] * self.inv_freq[None, :]  # [T, rotary_dim / 2]
        angles = torch.cat((freqs, freqs), dim=-1)
        cos, sin = angles.cos(), angles.sin()
        if self.attention_factor != 1.0:
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        return cos.to(dtype), sin.to(dtype)

    def _per_token_inv_freq(self, context_lens: torch.Tensor) -> torch.Tensor:
        # A step holds few distinct lengths: one frequency row per length, gathered per token.
        lengths, index = torch.unique(context_lens, return_inverse=True)
        rows = [rope_inv_freq(self.rotary_dim, self.config, int(n))[0] for n in lengths.tolist()]
        return torch.stack(rows).to(self.inv_freq.device)[index]


def apply_rotary(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:  # x [T, heads, head_dim], cos / sin [T, rotary_dim] -> [T, heads, head_dim]
    rotary_dim = cos.shape[-1]
    if rotary_dim == x.shape[-1]:
        return x * cos[:, None, :] + _rotate_half(x) * sin[:, None, :]
    rotated, passed = x[..., :rotary_dim], x[..., rotary_dim:]
    rotated = rotated * cos[:, None, :] + _rotate_half(rotated) * sin[:, None, :]
    return torch.cat((rotated, passed), dim=-1)


def rotate_query_key(
    query: torch.Tensor,  # [T, num_heads, head_dim]
    key: torch.Tensor,  # [T, num_kv_heads, head_dim]
    cos: torch.Tensor,  # [T, rotary_dim]
    sin: torch.Tensor,  # [T, rotary_dim]
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE on query and key: one fused in-place kernel on CUDA (kernels/rotary.py) when the
    whole head rotates, the torch expression elsewhere. The inputs may be views of a fused QKV
    output that is not used again."""
    if query.is_cuda and cos.shape[-1] == query.shape[-1]:
        from ferrite_server.kernels.rotary import rotate_query_key_

        rotate_query_key_(query, key, cos, sin)
        return query, key
    return apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)


def rotate_fused_query_key(
    query_key: torch.Tensor,  # [T, (num_heads + num_kv_heads) * head_dim]: q | k side by side
    num_heads: int,
    head_dim: int,
    cos: torch.Tensor,  # [T, rotary_dim]
    sin: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:  # query [T, num_heads, D], key [T, num_kv_heads, D]
    """RoPE on q and k in one pass over both heads (the torch expression): elementwise, so
    every value equals rotating them apart, with half the operator calls, which is what a CPU
    decode step of a small model pays for. `query_key` may be a view of the fused QKV output."""
    heads = query_key.view(query_key.shape[0], -1, head_dim)
    rotated = apply_rotary(heads, cos, sin)
    return rotated[:, :num_heads], rotated[:, num_heads:]
