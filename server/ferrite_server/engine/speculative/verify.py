"""Verification of proposed tokens in one forward: the model's choice after the known tokens,
then after each proposal in turn. Proposals are kept while each equals the model's choice at
its position; the first choice that differs (or, when all were accepted, the choice after the
last one) ends the run.

Each choice is made exactly as without speculation: the same logits processors over the same
history, and for sampled requests the same seeded uniform number of (seed, generated-token
index) drawn by inverse CDF. For a proposal that is a fixed token (an n-gram lookup), keeping
it exactly when the sample equals it is the rejection-sampling rule with a one-hot proposal
distribution: accepted with probability p(proposal), otherwise a token from p without the
proposal, renormalized. So the output is not only distributed as the model's: it is the very
same tokens, greedy or seeded, as a run without speculation."""

from __future__ import annotations

from collections.abc import Sequence

from ferrite_server.engine.types import GeneratedToken


def accepted_run(
    choices: Sequence[GeneratedToken], proposed_ids: Sequence[int]
) -> tuple[GeneratedToken, ...]:
    """choices[i]: the model's token after the known tokens + proposed_ids[:i] (one more
    choice than proposals) -> the tokens this step produces, in order."""
    if len(choices) != len(proposed_ids) + 1:
        raise ValueError(f"{len(choices)} choices for {len(proposed_ids)} proposals")
    run = []
    for index, choice in enumerate(choices):
        run.append(choice)
        if index == len(proposed_ids) or choice.token_id != proposed_ids[index]:
            break
    return tuple(run)
