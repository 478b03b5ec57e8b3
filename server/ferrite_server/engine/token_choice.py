"""The step's token choices: for every sequence that samples, the model's next token after
its known tokens (and, with proposals, after each proposal in turn), from the logits of its
sampling rows. Grammar masks, the sampler's processors and, for a draft model's proposals,
the rejection rule all apply here, so every path chooses tokens the same way."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ferrite_server.engine.forward_inputs import ForwardInputs
from ferrite_server.engine.grammar import allowed_tokens
from ferrite_server.engine.grammar.matcher import RequestGrammar
from ferrite_server.engine.sampling import SampleResult, SequenceSamplingState, sample
from ferrite_server.engine.sampling.watermark import Watermark
from ferrite_server.engine.speculative.rejection import ProposalRows, rejection_choices
from ferrite_server.engine.step_plan import ScheduledSequence
from ferrite_server.engine.types import GeneratedToken

# Most top alternatives a token reports (TGI's --max-top-n-tokens cap on the shard side).
MAX_TOP_N_TOKENS = 20


def choose_tokens(
    sequences: Sequence[ScheduledSequence],
    inputs: ForwardInputs,
    compute_logits: Callable[[torch.Tensor], torch.Tensor],
    hidden: torch.Tensor,  # [T, H]
    watermark: Watermark,
) -> dict[int, tuple[GeneratedToken, ...]]:
    """The model's choice of next token for every sequence that samples (with proposals:
    after the known tokens, then after each proposal), keyed by sequence index."""
    indices = [index for index, sequence in enumerate(sequences) if sequence.samples]
    if not indices:
        return {}
    row_ids: list[int] = []
    states: list[SequenceSamplingState] = []
    top_ns: list[int] = []
    grammars: list[RequestGrammar | None] = []
    drafted: list[ProposalRows] = []  # sequences whose proposals a draft sampled
    for index in indices:
        sequence = sequences[index]
        if sequence.proposal_probs is not None:
            drafted.append(
                ProposalRows(len(row_ids), sequence.proposed_ids, sequence.proposal_probs)
            )
        state = sequence.state
        num_rows = sequence.num_sampled_rows
        first_row = inputs.last_row(index) - num_rows + 1
        if state.grammar is not None:  # one row: constrained requests get no proposals
            state.grammar.follow(state.generated_ids)
        for offset in range(num_rows):
            grammars.append(state.grammar)
            row_ids.append(first_row + offset)
            states.append(
                SequenceSamplingState(
                    params=state.params.sampling,
                    # The whole prompt, cached part included (the router sent it all).
                    prompt_ids=state.prompt_ids,
                    # As if the proposals before this row had been generated: penalties
                    # and the seeded stream then match a run without speculation.
                    generated_ids=state.generated_ids + list(sequence.proposed_ids[:offset]),
                    seed=state.seed,
                )
            )
            top_ns.append(_top_n(sequence))
    rows = torch.tensor(row_ids, device=hidden.device)
    logits = compute_logits(hidden.index_select(0, rows))  # [N, V] float32
    allowed = allowed_tokens(grammars, logits.shape[1], logits.device)  # [N, V] or None
    result: SampleResult = sample(logits, states, max(top_ns), watermark, allowed)
    choices = [
        GeneratedToken(
            token_id=result.token_ids[i],
            logprob=result.logprobs[i],
            top_tokens=tuple(result.top_tokens[i][: top_ns[i]]),
        )
        for i in range(len(row_ids))
    ]
    if drafted:
        choices = rejection_choices(logits, states, choices, drafted, watermark)
    by_sequence: dict[int, tuple[GeneratedToken, ...]] = {}
    start = 0
    for index in indices:
        num_rows = sequences[index].num_sampled_rows
        by_sequence[index] = tuple(choices[start : start + num_rows])
        start += num_rows
    return by_sequence


def _top_n(sequence: ScheduledSequence) -> int:
    return min(sequence.state.params.top_n_tokens, MAX_TOP_N_TOKENS)
