"""Logprobs of prompt tokens: token i is scored by the logits at the row before it.

Within a chunk, row r predicts input token r+1. The chunk's first token is predicted by the
previous chunk's last hidden state (kept in RequestState.pending_hidden); the sequence's
position 0 (or a chunk after a prefix-cache hit, whose previous hidden the shard never saw)
gets NaN. Logits are computed a slice of rows at a time so a long chunk does not materialize
[chunk_len, vocab] floats at once.
"""

from __future__ import annotations

import math

import torch

from ferrite_server.models.interface import CausalLM

ROWS_PER_PASS = 256


def chunk_prompt_logprobs(
    model: CausalLM,
    predictor_hidden: torch.Tensor,  # [n, H]: rows predicting the targets, in order
    target_ids: torch.Tensor,  # [n] int64
) -> list[float]:
    values: list[float] = []
    for start in range(0, target_ids.shape[0], ROWS_PER_PASS):
        end = start + ROWS_PER_PASS
        logprobs = model.compute_logits(predictor_hidden[start:end]).log_softmax(dim=-1)
        picked = logprobs.gather(1, target_ids[start:end, None]).squeeze(1)  # [rows]
        values.extend(picked.tolist())
    return values


def prompt_logprobs_for_chunk(
    model: CausalLM,
    chunk_hidden: torch.Tensor,  # [n, H]: hidden states of the chunk's rows
    input_ids: torch.Tensor,  # [n] int64: the chunk's tokens
    previous_hidden: torch.Tensor | None,  # [H]: the previous chunk's last row, if known
) -> tuple[float, ...]:
    """One logprob per chunk token, aligned with input_ids."""
    predictors = chunk_hidden[:-1]  # [n - 1, H] predict tokens 1..n-1
    targets = input_ids[1:]
    if previous_hidden is None:
        return (math.nan, *chunk_prompt_logprobs(model, predictors, targets))
    predictors = torch.cat((previous_hidden[None, :], predictors))
    return tuple(chunk_prompt_logprobs(model, predictors, input_ids))
