"""Turning a StepInput into the sequences one forward computes, rejecting bad requests alone.

Every check that could otherwise crash the forward for everyone (an unknown id, a token id
outside the vocabulary, scheduled tokens the request does not have, a block table too short
or pointing outside the cache, a sequence longer than the model's positions) is made here,
per request: a bad request gets a `Generation(error=...)` and is forgotten; the rest of the
step runs. Only a step that is malformed as a whole (the same request twice) raises.

Only a running request's diffs are applied here: the tokens and blocks the router appended
or, when it says `append_generated_tokens` (asynchronous scheduling: the router planned this
step before it saw the request's previous generation), the tokens that generation produced,
which the shard kept for this (RequestState.last_generated_ids). Either way the request then
holds exactly the sequence the router will hold, so penalties, grammar, seeded sampling,
n-gram proposals and stop checks see the same history. The engine commits a sequence's
progress (computed tokens) only after its forward and sampling succeeded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ferrite_server.engine.batch_state import BatchState, RequestState
from ferrite_server.engine.errors import InvalidStepError
from ferrite_server.engine.types import Generation, NewRequest, RunningRequest, StepInput

if TYPE_CHECKING:
    import torch

# (request state, most tokens wanted) -> proposed next tokens (may be fewer, or none).
Proposer = Callable[[RequestState, int], tuple[int, ...]]


@dataclass(frozen=True)
class StepLimits:
    num_blocks: int  # valid block ids are 0 .. num_blocks-1
    block_size: int
    max_position_embeddings: int
    vocab_size: int
    adapter_names: tuple[str, ...] = ()  # LoRA adapters the shard holds, in index order


@dataclass(frozen=True)
class ScheduledSequence:
    """One sequence's part of the forward: `input_ids` at positions start_position.."""

    state: RequestState
    is_new: bool  # created by this step; joins the batch when the step succeeds
    input_ids: tuple[int, ...]  # known tokens, then the proposed ones
    start_position: int
    block_table: tuple[int, ...]
    # Speculative decoding: guessed next tokens (the tail of input_ids), verified this step.
    proposed_ids: tuple[int, ...] = ()
    # Most proposals this step may carry: the router's lookahead slots, within the block
    # table and the model's positions (0 for requests that get none, e.g. constrained ones).
    num_lookahead_slots: int = 0
    # [len(proposed_ids), V] the draft distribution each proposal was drawn from (a draft
    # model's, for sampled requests); None: fixed guesses (n-gram lookup, greedy drafts).
    proposal_probs: torch.Tensor | None = None

    @property
    def adapter_index(self) -> int:
        """Its request's LoRA adapter (-1: the base model)."""
        return self.state.adapter_index

    @property
    def samples(self) -> bool:
        """Computes the next token: the step reaches the end of the known tokens."""
        return self.end_position == len(self.state.token_ids) + len(self.proposed_ids)

    @property
    def num_sampled_rows(self) -> int:
        """Rows whose logits choose a token: the last known one and each proposal."""
        return 1 + len(self.proposed_ids) if self.samples else 0

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.state.params.prompt_logprobs and self.start_position < self.state.num_prompt_tokens

    @property
    def end_position(self) -> int:
        return self.start_position + len(self.input_ids)


@dataclass(frozen=True)
class StepPlan:
    sequences: list[ScheduledSequence]
    rejected: list[Generation]


class _Rejected(Exception):
    """A per-request problem; its message goes into Generation.error."""


def plan_step(
    step: StepInput,
    batch: BatchState,
    limits: StepLimits,
    draw_seed: Callable[[], int],
    propose: Proposer | None = None,
) -> StepPlan:
    """Validate each new and running request of `step` against the live requests.

    Requests the step names are released first by the caller. A rejected request that the
    shard knew is forgotten here. A running request's appended tokens (the router's, or its
    own previous generation when the router asks for that) and blocks are applied here; its
    progress is committed after the forward.
    """
    _refuse_duplicate_ids(step)
    sequences: list[ScheduledSequence] = []
    rejected: list[Generation] = []
    entries: list[NewRequest | RunningRequest] = [*step.new_requests, *step.running_requests]
    for entry in entries:
        try:
            if isinstance(entry, NewRequest):
                sequence = _plan_new(entry, batch, limits, draw_seed)
            else:
                sequence = _plan_running(entry, batch, limits, propose)
        except _Rejected as problem:
            batch.forget(entry.request_id)
            rejected.append(Generation(request_id=entry.request_id, error=str(problem)))
            continue
        sequences.append(sequence)
    return StepPlan(sequences=sequences, rejected=rejected)


def _refuse_duplicate_ids(step: StepInput) -> None:
    ids = [r.request_id for r in step.new_requests] + [r.request_id for r in step.running_requests]
    if len(ids) != len(set(ids)):
        duplicates = sorted({rid for rid in ids if ids.count(rid) > 1})
        raise InvalidStepError(f"request ids appear more than once in one step: {duplicates}")


def _plan_new(
    new: NewRequest, batch: BatchState, limits: StepLimits, draw_seed: Callable[[], int]
) -> ScheduledSequence:
    if new.request_id in batch:
        raise _Rejected("new request for an id the shard already holds")
    if new.params is None:
        raise _Rejected("new request without parameters")
    if new.num_cached_tokens % limits.block_size:
        raise _Rejected(f"{new.num_cached_tokens} cached tokens are not whole blocks")
    if not 0 <= new.num_prompt_tokens <= len(new.token_ids):
        raise _Rejected(f"num_prompt_tokens {new.num_prompt_tokens} of {len(new.token_ids)} tokens")
    _check_token_ids(new.token_ids, limits)
    seed = new.params.sampling.seed
    state = RequestState(
        request_id=new.request_id,
        params=new.params,
        seed=draw_seed() if seed is None else seed,
        token_ids=list(new.token_ids),
        num_prompt_tokens=new.num_prompt_tokens,
        block_table=list(new.block_table),
        num_computed_tokens=new.num_cached_tokens,
        adapter_index=_adapter_index(new.params.adapter_id, limits),
    )
    return _scheduled(state, new.num_scheduled_tokens, is_new=True, limits=limits)


def _plan_running(
    running: RunningRequest, batch: BatchState, limits: StepLimits, propose: Proposer | None
) -> ScheduledSequence:
    state = batch.get(running.request_id)
    if state is None:
        raise _Rejected("unknown request (finished, released or never sent as new)")
    appended_ids = _appended_token_ids(running, state)
    _check_token_ids(appended_ids, limits)
    # Consumed now, whatever follows: this step either commits its own generation in their
    # place or fails and the request is forgotten.
    state.last_generated_ids = ()
    state.token_ids.extend(appended_ids)
    state.block_table.extend(running.new_block_ids)
    num_lookahead = _lookahead_slots(state, running, limits)
    proposed = propose(state, num_lookahead) if propose is not None and num_lookahead > 0 else ()
    sequence = _scheduled(
        state, running.num_scheduled_tokens, is_new=False, limits=limits, proposed=proposed
    )
    return replace(sequence, num_lookahead_slots=num_lookahead)


def _appended_token_ids(running: RunningRequest, state: RequestState) -> tuple[int, ...]:
    """The tokens this step appends to the request's sequence before computing."""
    if not running.append_generated_tokens:
        return running.new_token_ids
    if running.new_token_ids:
        raise _Rejected(
            "append_generated_tokens with new_token_ids: the router either sends the tokens "
            "or asks the shard to append its own, not both"
        )
    if not state.last_generated_ids:
        raise _Rejected(
            "append_generated_tokens, but the request's previous step generated no tokens "
            "(a prompt chunk that was not the last, or they were appended already)"
        )
    return state.last_generated_ids


def _lookahead_slots(state: RequestState, running: RunningRequest, limits: StepLimits) -> int:
    """How many proposals a running request may get this step (0: none)."""
    reaches_end = state.num_computed_tokens + running.num_scheduled_tokens == len(state.token_ids)
    # A constrained request gets no proposals: verifying them would need a mask per row.
    unconstrained = state.params.sampling.grammar is None
    if running.num_lookahead_tokens <= 0 or not reaches_end or not unconstrained:
        return 0
    # Never past the model's positions nor the blocks granted, whatever the router reserved.
    capacity = min(limits.max_position_embeddings, len(state.block_table) * limits.block_size)
    return max(0, min(running.num_lookahead_tokens, capacity - len(state.token_ids)))


def _scheduled(
    state: RequestState,
    num_scheduled_tokens: int,
    is_new: bool,
    limits: StepLimits,
    proposed: tuple[int, ...] = (),
) -> ScheduledSequence:
    start = state.num_computed_tokens
    end = start + num_scheduled_tokens
    if num_scheduled_tokens <= 0:
        raise _Rejected("no tokens scheduled")
    if end > len(state.token_ids):
        raise _Rejected(
            f"{num_scheduled_tokens} tokens scheduled from position {start}, but the request "
            f"has {len(state.token_ids)} tokens"
        )
    sequence = ScheduledSequence(
        state=state,
        is_new=is_new,
        input_ids=tuple(state.token_ids[start:end]) + proposed,
        start_position=start,
        block_table=tuple(state.block_table),
        proposed_ids=proposed,
    )
    _check_positions_and_blocks(sequence, limits)
    return sequence


def _adapter_index(adapter_id: str, limits: StepLimits) -> int:
    if not adapter_id:
        return -1
    if adapter_id not in limits.adapter_names:
        loaded = ", ".join(repr(name) for name in limits.adapter_names) or "none"
        raise _Rejected(f"unknown LoRA adapter {adapter_id!r} (loaded: {loaded})")
    return limits.adapter_names.index(adapter_id)


def _check_token_ids(input_ids: tuple[int, ...], limits: StepLimits) -> None:
    bad = [token for token in input_ids if not 0 <= token < limits.vocab_size]
    if bad:
        raise _Rejected(f"token ids outside the vocabulary (size {limits.vocab_size}): {bad[:5]}")


def _check_positions_and_blocks(sequence: ScheduledSequence, limits: StepLimits) -> None:
    num_tokens = sequence.end_position
    if num_tokens > limits.max_position_embeddings:
        raise _Rejected(
            f"sequence of {num_tokens} tokens exceeds the model's "
            f"{limits.max_position_embeddings} positions"
        )
    num_blocks_needed = -(-num_tokens // limits.block_size)
    if len(sequence.block_table) < num_blocks_needed:
        raise _Rejected(
            f"block table has {len(sequence.block_table)} blocks; {num_tokens} tokens need "
            f"{num_blocks_needed} of {limits.block_size} tokens"
        )
    bad = [block for block in sequence.block_table if not 0 <= block < limits.num_blocks]
    if bad:
        raise _Rejected(f"block ids outside the cache (0..{limits.num_blocks - 1}): {bad[:5]}")
