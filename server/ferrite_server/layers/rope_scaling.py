"""RoPE inverse frequencies and their scaling variants, as transformers computes them.

`rope_inv_freq(rotary_dim, config, context_len)` returns the inverse frequencies
[rotary_dim / 2] float32 and the factor cos / sin are multiplied by ("attention factor"):
- "default": inv_freq[i] = theta ** (-2i / dim)
- "linear":  inv_freq / factor (positions interpolated)
- "dynamic": dynamic NTK; once a sequence is longer than the trained context, theta grows with
             its length (so the result depends on `context_len`)
- "yarn":    NTK-by-parts: high frequencies kept, low ones interpolated, a linear ramp between
             the correction dimensions; cos / sin scaled by 0.1 ln(factor) + 1
- "llama3":  Llama 3.1+: low frequencies divided by `factor`, high ones kept, a smooth blend
- "longrope": Phi-3: per-frequency short factors up to the original context, long ones beyond
             it (depends on `context_len`); cos / sin scaled by sqrt(1 + ln f / ln L_orig).
             transformers' Phi-3 generate recomputes a sequence's whole cache with the long
             factors when it first grows past the original context; ferrite keeps the keys
             already cached (as vLLM does), so tokens after such a crossing may differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

RopeType = Literal["default", "linear", "dynamic", "yarn", "llama3", "longrope"]
# Types whose frequencies depend on each sequence's current length.
LENGTH_DEPENDENT_ROPE_TYPES = ("dynamic", "longrope")


@dataclass(frozen=True)
class RopeConfig:
    theta: float = 10000.0
    rope_type: RopeType = "default"
    factor: float = 1.0
    # The fraction of head_dim that is rotated (Phi-3 / Phi-4-mini / StableLM); the rest passes.
    partial_rotary_factor: float = 1.0
    # llama3 / yarn / longrope / dynamic: the context the model was trained on. For "dynamic"
    # this is the config's max_position_embeddings, as transformers uses it.
    original_max_position_embeddings: int = 8192
    # llama3 only:
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    # yarn only (None: derived from factor / mscale as transformers does):
    attention_factor: float | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True
    # longrope only:
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()

    def rotary_dim(self, head_dim: int) -> int:
        return int(head_dim * self.partial_rotary_factor)

    @property
    def depends_on_length(self) -> bool:
        return self.rope_type in LENGTH_DEPENDENT_ROPE_TYPES


def _exponents(dim: int) -> torch.Tensor:  # [dim / 2]: 2i / dim
    return torch.arange(0, dim, 2, dtype=torch.int64).float() / dim


def _llama3(inv_freq: torch.Tensor, config: RopeConfig) -> torch.Tensor:
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


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn_attention_factor(config: RopeConfig) -> float:
    if config.attention_factor is not None:
        return config.attention_factor
    if config.mscale and config.mscale_all_dim:
        return _yarn_mscale(config.factor, config.mscale) / _yarn_mscale(
            config.factor, config.mscale_all_dim
        )
    return _yarn_mscale(config.factor)


def _yarn(dim: int, config: RopeConfig) -> torch.Tensor:
    def correction_dim(num_rotations: float) -> float:
        # The dimension whose wavelength makes `num_rotations` turns over the trained context.
        turns = config.original_max_position_embeddings / (num_rotations * 2 * math.pi)
        return (dim * math.log(turns)) / (2 * math.log(config.theta))

    low, high = correction_dim(config.beta_fast), correction_dim(config.beta_slow)
    if config.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # a degenerate ramp would divide by zero
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos_freqs = config.theta ** _exponents(dim)
    extrapolated, interpolated = 1.0 / pos_freqs, 1.0 / (config.factor * pos_freqs)
    keep = 1 - ramp  # 1: high frequency, kept as trained
    return interpolated * (1 - keep) + extrapolated * keep


def _longrope_attention_factor(config: RopeConfig) -> float:
    if config.attention_factor is not None:
        return config.attention_factor
    if config.factor <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(config.factor) / math.log(config.original_max_position_embeddings))


def rope_inv_freq(
    rotary_dim: int, config: RopeConfig, context_len: int | None = None
) -> tuple[torch.Tensor, float]:  # ([rotary_dim / 2] float32, attention factor)
    """Inverse frequencies for a sequence of `context_len` tokens (None: the trained context)."""
    exponents = _exponents(rotary_dim)
    if config.rope_type == "linear":
        return 1.0 / (config.theta**exponents) / config.factor, 1.0
    if config.rope_type == "llama3":
        return _llama3(1.0 / (config.theta**exponents), config), 1.0
    if config.rope_type == "yarn":
        return _yarn(rotary_dim, config), _yarn_attention_factor(config)
    if config.rope_type == "dynamic":
        trained = config.original_max_position_embeddings
        length = max(context_len or trained, trained)
        growth = (config.factor * length / trained) - (config.factor - 1)
        theta = config.theta * growth ** (rotary_dim / (rotary_dim - 2))
        return 1.0 / (theta**exponents), 1.0
    if config.rope_type == "longrope":
        is_long = context_len is not None and context_len > config.original_max_position_embeddings
        factors = torch.tensor(config.long_factor if is_long else config.short_factor)
        return 1.0 / (factors.float() * config.theta**exponents), _longrope_attention_factor(config)
    return 1.0 / (config.theta**exponents), 1.0
