"""Seeded randomness that depends only on (request seed, tokens generated so far).

Each sampled row gets one uniform number u in [0, 1), computed on the host by hashing
(seed, step) with SplitMix64, and takes the token where u falls in its cumulative
distribution (inverse-CDF sampling, what torch.multinomial does inside). So a request's
tokens never depend on what else is in the batch, on its row, or on whether it was
preempted and recomputed; no per-row generator or [V] noise is needed, and the same
(seed, step) gives the same u on every device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_MASK_64 = (1 << 64) - 1
_MANTISSA_BITS = 53  # a float64 holds this many random bits exactly


def _splitmix64(value: int) -> int:
    """SplitMix64 finalizer: a bijective 64-bit mix, so nearby (seed, step) pairs give
    unrelated outputs."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK_64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK_64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK_64
    return value ^ (value >> 31)


def stream_uniform(seed: int, step: int) -> float:
    """Draw number `step` of the stream of `seed`: uniform in [0, 1)."""
    mixed = _splitmix64(_splitmix64(seed & _MASK_64) ^ (step & _MASK_64))
    return (mixed >> (64 - _MANTISSA_BITS)) / float(1 << _MANTISSA_BITS)


def draw_from_scores(
    scores: torch.Tensor, seeds: Sequence[int], steps: Sequence[int]
) -> torch.Tensor:
    """scores [M, V] (removed tokens -inf) -> [M] int64 token ids, row m drawn with the
    uniform of stream (seeds[m], steps[m])."""
    uniforms = [stream_uniform(seed, step) for seed, step in zip(seeds, steps, strict=True)]
    target = torch.tensor(uniforms, dtype=torch.float64).to(scores.device, non_blocking=True)
    # float64 cumulative sums: over 10^5 tokens float32 rounding would bias the tail.
    cdf = scores.softmax(dim=-1).cumsum(dim=-1, dtype=torch.float64)  # [M, V]
    target = (target * cdf[:, -1])[:, None]  # [M, 1], strictly below each row's total
    # The first index whose cumulative mass exceeds the target: never a zero-probability
    # token, since its cumulative mass equals its predecessor's.
    token_ids = torch.searchsorted(cdf, target, right=True)[:, 0]
    return token_ids.clamp_(max=scores.shape[1] - 1)
