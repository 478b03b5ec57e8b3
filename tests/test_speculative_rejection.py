"""The rejection rule of speculative sampling (engine/speculative/rejection.py) on fixed
distributions: whatever the draft distribution q, the emitted token (the proposal when
accepted, else the residual draw) is distributed as the target p; a proposal is accepted
with probability sum(min(p, q)); seeded draws repeat. The same chi-square check rejects two
deliberately wrong rules, so it can fail."""

from __future__ import annotations

import pytest
import torch

from ferrite_server.engine.sampling.random_stream import draw_from_scores
from ferrite_server.engine.speculative.rejection import (
    DRAFT_STREAM_SALT,
    RESIDUAL_STREAM_SALT,
    accept_and_resample,
    stream_seed,
)
from tests.support.chi_square import goodness_of_fit, passes

NUM_DRAWS = 20_000
# p and q overlap partly: q puts mass where p has little and misses p's second token.
TARGET = torch.tensor([0.40, 0.25, 0.15, 0.10, 0.07, 0.03])
DRAFT = torch.tensor([0.10, 0.02, 0.30, 0.08, 0.30, 0.20])


def _draws(
    target: torch.Tensor, draft: torch.Tensor, first_seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """NUM_DRAWS independent rows: (proposals ~ q, accepted, residual draws, seeds)."""
    seeds = list(range(first_seed, first_seed + NUM_DRAWS))
    steps = [3] * NUM_DRAWS
    draft_rows = draft.expand(NUM_DRAWS, -1)
    proposals = draw_from_scores(
        draft_rows.log(), [stream_seed(seed, DRAFT_STREAM_SALT) for seed in seeds], steps
    )
    accepted, resampled = accept_and_resample(
        target.expand(NUM_DRAWS, -1), draft_rows, proposals, seeds, steps
    )
    return proposals, accepted, resampled, seeds


def _as_probs(distribution: torch.Tensor) -> dict[int, float]:
    return dict(enumerate(distribution.tolist()))


def test_emitted_tokens_follow_the_target_distribution() -> None:
    for draft in (DRAFT, TARGET.flip(0), torch.full((6,), 1 / 6)):
        proposals, accepted, resampled, _ = _draws(TARGET, draft)
        emitted = torch.where(accepted, proposals, resampled).tolist()
        assert passes(goodness_of_fit(emitted, _as_probs(TARGET))), draft
        acceptance = accepted.double().mean().item()
        assert acceptance == pytest.approx(torch.minimum(TARGET, draft).sum().item(), abs=0.015)


def test_deliberately_wrong_rules_fail_the_same_check() -> None:
    proposals, accepted, _, seeds = _draws(TARGET, DRAFT)
    steps = [3] * NUM_DRAWS
    residual_seeds = [stream_seed(seed, RESIDUAL_STREAM_SALT) for seed in seeds]
    # Resampling from p instead of max(p - q, 0) after a rejection.
    from_target = draw_from_scores(TARGET.expand(NUM_DRAWS, -1).log(), residual_seeds, steps)
    emitted = torch.where(accepted, proposals, from_target).tolist()
    assert not passes(goodness_of_fit(emitted, _as_probs(TARGET)))
    # Keeping every proposal: the draft's distribution.
    assert not passes(goodness_of_fit(proposals.tolist(), _as_probs(TARGET)))


def test_equal_distributions_accept_every_proposal() -> None:
    _, accepted, _, _ = _draws(TARGET, TARGET.clone())
    assert bool(accepted.all())


def test_a_rejected_proposal_is_never_the_resampled_token() -> None:
    proposals, accepted, resampled, _ = _draws(TARGET, DRAFT)
    rejected = ~accepted
    assert bool(rejected.any())
    assert not bool((resampled[rejected] == proposals[rejected]).any())


def test_one_hot_distributions_keep_a_proposal_exactly_when_the_target_agrees() -> None:
    # Greedy requests: p and q one-hot at the two models' argmax.
    one_hot = torch.eye(6)
    target = one_hot[[0, 0, 3]]
    draft = one_hot[[0, 2, 3]]
    accepted, resampled = accept_and_resample(
        target, draft, torch.tensor([0, 2, 3]), seeds=[1, 2, 3], steps=[0, 0, 0]
    )
    assert accepted.tolist() == [True, False, True]
    assert resampled[1].item() == 0  # the target's own choice


def test_seeded_draws_repeat_and_seeds_differ() -> None:
    first = _draws(TARGET, DRAFT)
    again = _draws(TARGET, DRAFT)
    other = _draws(TARGET, DRAFT, first_seed=NUM_DRAWS)
    for ours, theirs in zip(first[:3], again[:3], strict=True):
        assert torch.equal(ours, theirs)
    assert not torch.equal(first[1], other[1])
