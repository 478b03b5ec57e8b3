"""Per-row sampling parameters of a batch as [N] tensors on the logits' device.

Neutral values are normalized here (temperature 0 -> 1, top_k 0 -> vocab size, top_p 0 -> 1,
...), so the batched transforms can apply every row's parameter without branching, and the
`needs_*` flags let the sampler skip a transform no row of the batch uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ferrite_server.engine.sampling.state import SequenceSamplingState
from ferrite_server.engine.types import SamplingParams


def _is_neutral_scale(value: float) -> bool:
    """temperature / top_p / typical_p / repetition_penalty: 0 or 1 means off."""
    return value == 0.0 or value == 1.0


@dataclass(frozen=True)
class PenaltyParams:
    """[N] float32 tensors; only built when some row has a penalty."""

    repetition: torch.Tensor  # 1.0 where off
    frequency: torch.Tensor  # 0.0 where off
    presence: torch.Tensor  # 0.0 where off


@dataclass(frozen=True)
class WarpParams:
    """[M] tensors for the M rows that sample (do_sample), in that order."""

    temperature: torch.Tensor  # float32, 1.0 where off
    top_k: torch.Tensor  # int64, vocab size where off
    top_p: torch.Tensor  # float32, 1.0 where off
    min_p: torch.Tensor  # float32, 0.0 where off
    typical_p: torch.Tensor  # float32, 1.0 where off
    needs_temperature: bool
    max_top_k: int  # largest top_k below the vocab size; 0 when no row uses top-k
    every_row_top_k: bool
    needs_top_p: bool
    needs_min_p: bool
    needs_typical_p: bool


def needs_logit_bias(params: SamplingParams) -> bool:
    return len(params.logit_bias) > 0


def needs_repetition_penalty(params: SamplingParams) -> bool:
    return not _is_neutral_scale(params.repetition_penalty)


def needs_frequency_presence(params: SamplingParams) -> bool:
    return params.frequency_penalty != 0.0 or params.presence_penalty != 0.0


def needs_penalties(params: SamplingParams) -> bool:
    return needs_repetition_penalty(params) or needs_frequency_presence(params)


def build_penalty_params(
    seqs: Sequence[SequenceSamplingState], device: torch.device
) -> PenaltyParams:
    rows = [
        (
            1.0 if _is_neutral_scale(s.params.repetition_penalty) else s.params.repetition_penalty,
            s.params.frequency_penalty,
            s.params.presence_penalty,
        )
        for s in seqs
    ]
    # [N, 3]: one host-to-device copy for all three parameters.
    packed = torch.tensor(rows, dtype=torch.float32).to(device, non_blocking=True)
    return PenaltyParams(repetition=packed[:, 0], frequency=packed[:, 1], presence=packed[:, 2])


def build_warp_params(
    sampled: Sequence[SamplingParams], vocab_size: int, device: torch.device
) -> WarpParams:
    rows = [
        (
            1.0 if _is_neutral_scale(p.temperature) else p.temperature,
            float(vocab_size if p.top_k <= 0 else min(p.top_k, vocab_size)),
            1.0 if _is_neutral_scale(p.top_p) else p.top_p,
            max(p.min_p, 0.0),
            1.0 if _is_neutral_scale(p.typical_p) else p.typical_p,
        )
        for p in sampled
    ]
    # [M, 5] float32 holds top_k exactly (vocab sizes are far below 2**24).
    packed = torch.tensor(rows, dtype=torch.float32).to(device, non_blocking=True)
    return WarpParams(
        temperature=packed[:, 0],
        top_k=packed[:, 1].to(torch.int64),
        top_p=packed[:, 2],
        min_p=packed[:, 3],
        typical_p=packed[:, 4],
        needs_temperature=any(row[0] != 1.0 for row in rows),
        max_top_k=int(max((row[1] for row in rows if row[1] < vocab_size), default=0)),
        every_row_top_k=all(row[1] < vocab_size for row in rows),
        needs_top_p=any(row[2] < 1.0 for row in rows),
        needs_min_p=any(row[3] > 0.0 for row in rows),
        needs_typical_p=any(row[4] < 1.0 for row in rows),
    )
