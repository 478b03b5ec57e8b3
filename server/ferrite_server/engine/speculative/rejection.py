"""Speculative sampling's acceptance rule, for proposals drawn from a draft distribution q
(Leviathan et al., "Fast Inference from Transformers via Speculative Decoding", 2023; Chen et
al., "Accelerating Large Language Model Decoding with Speculative Sampling", 2023).

For proposal x ~ q at a position where the target's distribution is p:
- keep x with probability min(1, p(x) / q(x));
- otherwise emit a token drawn from normalize(max(p - q, 0)) and stop;
- when every proposal was kept, emit one more token drawn from p after the last one.
Each emitted token is then distributed exactly as p, whatever q is: q only sets how many
tokens a step yields. p and q are the distributions sampling really draws from: both after
the same logits processors (watermark, logit bias, penalties, temperature, top-k/p, ...) over
the same history, proposals included.

Randomness is seeded like the sampler's (random_stream.py): each uniform number is one of
(request seed, generated-token index), in a stream of its own per purpose (the draft's draw,
the acceptance test, the draw from the residual), so a seeded request gives the same tokens
run after run, whatever else is batched with it. The bonus token after a fully accepted run
is the sampler's own draw from p at its index.

Greedy requests need none of this: their proposals are the draft's argmax and are kept when
they equal the target's argmax (verify.accepted_run), which is this rule with one-hot p and q.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ferrite_server.engine.sampling import SequenceSamplingState, sampling_scores
from ferrite_server.engine.sampling.random_stream import draw_from_scores, stream_uniform
from ferrite_server.engine.sampling.watermark import Watermark
from ferrite_server.engine.types import GeneratedToken

_MASK_64 = (1 << 64) - 1
# Xored into a request's seed: one independent stream per purpose (random_stream.py mixes the
# seed before the index, so nearby seeds still give unrelated streams).
DRAFT_STREAM_SALT = 0x6A09E667F3BCC908
ACCEPT_STREAM_SALT = 0xBB67AE8584CAA73B
RESIDUAL_STREAM_SALT = 0x3C6EF372FE94F82B
# A residual with less mass than this is rounding noise (p == q up to float error): p itself
# is then the distribution to draw from (exact arithmetic would never get here).
_MIN_RESIDUAL_MASS = 1e-6


def stream_seed(seed: int, salt: int) -> int:
    return (seed ^ salt) & _MASK_64


def accept_and_resample(
    target_probs: torch.Tensor,  # [R, V] p of each verified row
    draft_probs: torch.Tensor,  # [R, V] q the proposal was drawn from
    proposed_ids: torch.Tensor,  # [R] int64
    seeds: Sequence[int],  # [R] request seeds
    steps: Sequence[int],  # [R] generated-token index of each row's token
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row by row: (accepted [R] bool, the residual draw [R] int64 used where not accepted)."""
    p_proposed = target_probs.gather(1, proposed_ids[:, None])[:, 0].double()  # [R]
    q_proposed = draft_probs.gather(1, proposed_ids[:, None])[:, 0].double()  # [R], > 0: drawn
    uniforms = [
        stream_uniform(stream_seed(seed, ACCEPT_STREAM_SALT), step)
        for seed, step in zip(seeds, steps, strict=True)
    ]
    u = torch.tensor(uniforms, dtype=torch.float64).to(target_probs.device)
    accepted = u * q_proposed < p_proposed  # u < p/q without dividing by a tiny q
    residual = (target_probs - draft_probs).clamp_(min=0.0)  # [R, V]
    mass = residual.sum(dim=-1, keepdim=True)
    residual = torch.where(mass > _MIN_RESIDUAL_MASS, residual, target_probs)
    residual_seeds = [stream_seed(seed, RESIDUAL_STREAM_SALT) for seed in seeds]
    # log(0) = -inf: draw_from_scores' softmax gives normalize(residual) back.
    resampled = draw_from_scores(residual.log(), residual_seeds, steps)
    return accepted, resampled


@dataclass(frozen=True)
class ProposalRows:
    """One sequence's verified rows in the step's sampled-row list: rows first_row ..
    first_row + len(proposed_ids) - 1 chose after each proposal's predecessor; the row after
    them is the bonus row."""

    first_row: int
    proposed_ids: tuple[int, ...]
    draft_probs: torch.Tensor  # [len(proposed_ids), V] q of each proposal


def rejection_choices(
    logits: torch.Tensor,  # [N, V] float32 raw target logits of the step's sampled rows
    states: Sequence[SequenceSamplingState],  # [N] as the sampler saw each row
    choices: Sequence[GeneratedToken],  # [N] the sampler's choices
    groups: Sequence[ProposalRows],
    watermark: Watermark | None,
) -> list[GeneratedToken]:
    """`choices` with each verified row's token replaced by the rule's outcome there: the
    proposal when accepted, else the residual draw (which never equals it), so that
    verify.accepted_run cuts each run at its first rejection. Bonus rows keep the sampler's
    draw from p; logprobs are of the raw logits and top alternatives stay as sampled."""
    rows = [group.first_row + i for group in groups for i in range(len(group.proposed_ids))]
    if not rows:
        return list(choices)
    device = logits.device
    row_index = torch.tensor(rows, dtype=torch.int64).to(device)
    row_logits = logits.index_select(0, row_index)  # [R, V]
    row_states = [states[row] for row in rows]
    target_probs = sampling_scores(row_logits, row_states, watermark).softmax(dim=-1)
    draft_probs = torch.cat([group.draft_probs for group in groups]).to(target_probs.dtype)
    proposed = torch.tensor([t for g in groups for t in g.proposed_ids], dtype=torch.int64)
    proposed = proposed.to(device)
    accepted, resampled = accept_and_resample(
        target_probs,
        draft_probs,
        proposed,
        seeds=[state.seed for state in row_states],
        steps=[len(state.generated_ids) for state in row_states],
    )
    emitted = torch.where(accepted, proposed, resampled)  # [R]
    logprobs = row_logits.gather(1, emitted[:, None])[:, 0] - row_logits.logsumexp(dim=-1)
    # One device-to-host copy: float64 holds the token ids exactly.
    host = torch.stack([emitted.double(), logprobs.double()], dim=1).cpu().tolist()
    result = list(choices)
    for row, (token_id, logprob) in zip(rows, host, strict=True):
        result[row] = GeneratedToken(
            token_id=int(token_id), logprob=logprob, top_tokens=choices[row].top_tokens
        )
    return result
