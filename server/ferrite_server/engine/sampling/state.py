"""What the sampler needs to know about each sequence, and what it answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ferrite_server.engine.types import SamplingParams


@dataclass(frozen=True)
class SequenceSamplingState:
    """One row of the batch's logits, as the sampler sees it."""

    params: SamplingParams
    prompt_ids: Sequence[int]
    # Tokens generated so far (including ones generated before a preemption). Its length is
    # the position in the request's seeded random stream.
    generated_ids: Sequence[int]
    seed: int  # resolved: the request's seed, or one the shard drew for it


@dataclass(frozen=True)
class SampleResult:
    """Per row: the chosen token, its logprob and the top alternatives.

    Logprobs come from log_softmax of the RAW logits (before bias, penalties and sampling
    transforms), which is what the proto's GeneratedToken.logprob promises.
    """

    token_ids: list[int]
    logprobs: list[float]
    top_tokens: list[tuple[tuple[int, float], ...]]  # (token_id, logprob), most likely first
