"""Sampling transforms for the rows that sample, in Hugging Face's warper order: temperature,
top_k, top_p, min_p, typical_p. Each filter returns a [M, V] bool mask of tokens to remove;
the caller sets them to -inf before the next filter, so each one sees the distribution the
previous ones left (as chained HF warpers do). Every filter keeps at least one token.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


def apply_temperature(scores: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """scores [M, V] / temperature [M] (1.0 for rows without temperature)."""
    return scores / temperature[:, None]


def top_k_mask(scores: torch.Tensor, top_k: torch.Tensor, max_k: int) -> torch.Tensor:
    """Remove tokens below each row's k-th largest score (ties with it are kept, as in HF).

    top_k [M] int64 in 1..V (V for rows without top-k); max_k: the largest k below V, known
    on the host so no device sync is needed."""
    vocab_size = scores.shape[1]
    active = top_k < vocab_size  # [M]
    top_values = scores.topk(max_k, dim=-1).values  # [M, max_k], descending
    kth_index = (torch.where(active, top_k, 1) - 1).clamp(max=max_k - 1)[:, None]  # [M, 1]
    kth_value = top_values.gather(1, kth_index)  # [M, 1]
    return (scores < kth_value) & active[:, None]


# top_p first looks among this many most likely tokens: sorting them is far cheaper than
# sorting the vocabulary, and they almost always hold the top_p mass already.
TOP_P_CANDIDATE_TOKENS = 1024


def top_p_mask(
    scores: torch.Tensor, top_p: torch.Tensor, max_kept_tokens: int | None = None
) -> torch.Tensor:
    """Keep the smallest most-likely set whose probability reaches top_p [M] (1.0: off).

    In descending order a token is removed when the mass strictly before it already reaches
    top_p; this is HF's rule (remove where the ascending cumulative mass <= 1 - top_p).
    max_kept_tokens: how many of the most likely tokens to try first (after a top-k on every
    row, its largest k; ties beyond them fall to the full sort only when needed)."""
    active = top_p < 1.0  # [M]
    num_candidates = min(max_kept_tokens or TOP_P_CANDIDATE_TOKENS, scores.shape[1])
    sorted_scores, sorted_index = scores.topk(num_candidates, dim=-1)  # [M, C], descending
    log_normalizer = scores.logsumexp(dim=-1, keepdim=True)  # [M, 1]
    sorted_probs = (sorted_scores - log_normalizer).exp()
    mass = sorted_probs.cumsum(dim=-1)  # [M, C]
    # If every active row reaches its top_p inside the candidates, the tokens beyond them are
    # removed anyway; else sort the whole vocabulary (one host sync decides).
    reached = (mass[:, -1] >= top_p) | ~active
    if num_candidates < scores.shape[1] and not bool(reached.all()):
        sorted_scores, sorted_index = scores.sort(dim=-1, descending=True)  # [M, V]
        sorted_probs = (sorted_scores - log_normalizer).exp()
        mass = sorted_probs.cumsum(dim=-1)
    sorted_remove = (mass - sorted_probs) >= top_p[:, None]
    sorted_remove[:, 0] = False
    remove = torch.ones_like(scores, dtype=torch.bool)  # tokens beyond the candidates
    remove.scatter_(1, sorted_index, sorted_remove)
    return remove & active[:, None]


def min_p_mask(scores: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Remove tokens whose probability is below min_p [M] times the row's top probability."""
    probs = scores.softmax(dim=-1)  # [M, V]
    threshold = min_p[:, None] * probs.amax(dim=-1, keepdim=True)  # [M, 1]
    return probs < threshold


def typical_mask(scores: torch.Tensor, typical_p: torch.Tensor) -> torch.Tensor:
    """Locally typical sampling (Meister et al.; HF's TypicalLogitsWarper): rank tokens by how
    far their surprisal is from the entropy, keep the closest ones until typical_p [M] of the
    mass is covered (1.0: off)."""
    log_probs = scores.log_softmax(dim=-1)  # [M, V]; -inf for removed tokens
    probs = log_probs.exp()
    entropy = -(log_probs * probs).nansum(dim=-1, keepdim=True)  # [M, 1]
    distance = (-log_probs - entropy).abs()  # [M, V]; inf for removed tokens
    sorted_distance, sorted_index = distance.sort(dim=-1)
    sorted_probs = probs.gather(1, sorted_index)
    covered = sorted_probs.cumsum(dim=-1)
    last_kept = (covered < typical_p[:, None]).sum(dim=-1, keepdim=True)  # [M, 1]
    last_kept = last_kept.clamp(max=scores.shape[1] - 1)
    sorted_remove = sorted_distance > sorted_distance.gather(1, last_kept)
    sorted_remove[:, 0] = False
    sorted_remove &= (typical_p < 1.0)[:, None]
    return torch.zeros_like(sorted_remove).scatter(1, sorted_index, sorted_remove)
