"""Logit processors that run for greedy and sampled rows alike, in Hugging Face's order:
logit bias, then repetition penalty, then OpenAI frequency / presence penalties.

Token histories are flattened into (row, token) index pairs and scattered into dense [N, V]
tensors on the device in one call, instead of looping over rows there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from ferrite_server.engine.sampling.batch_params import (
    PenaltyParams,
    needs_frequency_presence,
    needs_repetition_penalty,
)
from ferrite_server.engine.sampling.state import SequenceSamplingState


def _flat_indices(
    token_lists: Iterable[tuple[int, Iterable[int]]], vocab_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, tokens) pairs -> two [K] int64 index tensors; ids outside the vocab are dropped
    (the router validates ids; a stray one must not crash the whole batch)."""
    rows: list[int] = []
    tokens: list[int] = []
    for row, ids in token_lists:
        for token_id in ids:
            if 0 <= token_id < vocab_size:
                rows.append(row)
                tokens.append(token_id)
    index = torch.tensor([rows, tokens], dtype=torch.int64).to(device, non_blocking=True)
    return index[0], index[1]


def apply_logit_bias(scores: torch.Tensor, seqs: Sequence[SequenceSamplingState]) -> torch.Tensor:
    """scores [N, V] + each row's additive bias (OpenAI logit_bias)."""
    vocab_size = scores.shape[1]
    pairs = [
        (row, token_id, bias)
        for row, seq in enumerate(seqs)
        for token_id, bias in seq.params.logit_bias
        if 0 <= token_id < vocab_size
    ]
    if not pairs:
        return scores
    rows, token_ids, biases = zip(*pairs)
    index = torch.tensor([rows, token_ids], dtype=torch.int64).to(scores.device)
    values = torch.tensor(biases, dtype=scores.dtype).to(scores.device)
    return scores.index_put((index[0], index[1]), values, accumulate=True)


def apply_penalties(
    scores: torch.Tensor, seqs: Sequence[SequenceSamplingState], params: PenaltyParams
) -> torch.Tensor:
    """Repetition penalty (HF: over prompt + generated; positive logits are divided, negative
    ones multiplied), then frequency / presence penalties (OpenAI: over generated tokens,
    subtract penalty * count and penalty * [count > 0])."""
    num_rows, vocab_size = scores.shape
    device = scores.device
    repetition_rows = [
        (row, [*seq.prompt_ids, *seq.generated_ids])
        for row, seq in enumerate(seqs)
        if needs_repetition_penalty(seq.params)
    ]
    if repetition_rows:
        rows, token_ids = _flat_indices(repetition_rows, vocab_size, device)
        seen = torch.zeros(num_rows, vocab_size, dtype=torch.bool, device=device)
        seen[rows, token_ids] = True
        penalty = params.repetition[:, None]  # [N, 1]
        penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
        scores = torch.where(seen, penalized, scores)
    frequency_rows = [
        (row, seq.generated_ids)
        for row, seq in enumerate(seqs)
        if needs_frequency_presence(seq.params)
    ]
    if frequency_rows:
        rows, token_ids = _flat_indices(frequency_rows, vocab_size, device)
        counts = torch.zeros(num_rows, vocab_size, dtype=scores.dtype, device=device)
        counts.index_put_((rows, token_ids), torch.ones_like(rows, dtype=scores.dtype), accumulate=True)
        scores = (
            scores
            - params.frequency[:, None] * counts
            - params.presence[:, None] * (counts > 0).to(scores.dtype)
        )
    return scores
