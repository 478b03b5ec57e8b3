"""Turning a StepInput into the sequences one forward computes, rejecting bad requests alone.

Every check that could otherwise crash the forward for everyone (an unknown id, a token id
outside the vocabulary, a block table too short or pointing outside the cache, a sequence
longer than the model's positions) is made here, per request: a bad request gets a
`Generation(error=...)` and is forgotten; the rest of the step runs. Only a step that is
malformed as a whole (the same request twice) raises.

Nothing here changes a request's tokens or counters: the engine commits a sequence's progress
only after its forward and sampling succeeded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ferrite_server.engine.batch_state import BatchState, RequestState
from ferrite_server.engine.errors import InvalidStepError
from ferrite_server.engine.types import DecodeEntry, Generation, PrefillChunk, StepInput


@dataclass(frozen=True)
class StepLimits:
    num_blocks: int  # valid block ids are 0 .. num_blocks-1
    block_size: int
    max_position_embeddings: int
    vocab_size: int


@dataclass(frozen=True)
class ScheduledSequence:
    """One sequence's part of the forward: `input_ids` at positions start_position.."""

    state: RequestState
    is_new: bool  # created by this step's chunk; joins the batch when the step succeeds
    input_ids: tuple[int, ...]
    start_position: int
    block_table: tuple[int, ...]
    is_prompt_chunk: bool
    samples: bool  # computes the next token (a last chunk or a decode)

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.is_prompt_chunk and self.state.params.prompt_logprobs

    @property
    def end_position(self) -> int:
        return self.start_position + len(self.input_ids)

    def history_after_step(self) -> tuple[list[int], list[int]]:
        """(prompt_ids, generated_ids) including this step's input, for the sampler."""
        state = self.state
        if not self.is_prompt_chunk:
            return state.prompt_ids, state.generated_ids
        prompt_ids = state.prompt_ids + list(self.input_ids)
        num_resumed = state.params.resumed_generated_tokens if self.samples else 0
        split = len(prompt_ids) - num_resumed
        return prompt_ids[:split], prompt_ids[split:]


@dataclass(frozen=True)
class StepPlan:
    sequences: list[ScheduledSequence]
    rejected: list[Generation]


class _Rejected(Exception):
    """A per-request problem; its message goes into Generation.error."""


def plan_step(
    step: StepInput, batch: BatchState, limits: StepLimits, draw_seed: Callable[[], int]
) -> StepPlan:
    """Validate each chunk and decode of `step` against the live requests.

    Requests the step names are released first by the caller. A rejected request that the
    shard knew is forgotten here.
    """
    _refuse_duplicate_ids(step)
    sequences: list[ScheduledSequence] = []
    rejected: list[Generation] = []
    entries: list[PrefillChunk | DecodeEntry] = [*step.chunks, *step.decodes]
    for entry in entries:
        try:
            if isinstance(entry, PrefillChunk):
                sequence = _plan_chunk(entry, batch, limits, draw_seed)
            else:
                sequence = _plan_decode(entry, batch, limits)
        except _Rejected as problem:
            batch.forget(entry.request_id)
            rejected.append(Generation(request_id=entry.request_id, error=str(problem)))
            continue
        sequences.append(sequence)
    return StepPlan(sequences=sequences, rejected=rejected)


def _refuse_duplicate_ids(step: StepInput) -> None:
    ids = [c.request_id for c in step.chunks] + [d.request_id for d in step.decodes]
    if len(ids) != len(set(ids)):
        duplicates = sorted({rid for rid in ids if ids.count(rid) > 1})
        raise InvalidStepError(f"request ids appear more than once in one step: {duplicates}")


def _plan_chunk(
    chunk: PrefillChunk, batch: BatchState, limits: StepLimits, draw_seed: Callable[[], int]
) -> ScheduledSequence:
    state = batch.get(chunk.request_id)
    is_new = state is None
    if state is None:
        if chunk.params is None:
            raise _Rejected("unknown request: its first chunk must carry parameters")
        seed = chunk.params.sampling.seed
        state = RequestState(
            request_id=chunk.request_id,
            params=chunk.params,
            seed=draw_seed() if seed is None else seed,
            num_computed_tokens=chunk.num_cached_tokens,
        )
    elif state.prompt_complete:
        raise _Rejected("prompt chunk for a request whose prompt is already complete")
    elif chunk.num_cached_tokens != state.num_computed_tokens:
        raise _Rejected(
            f"num_cached_tokens {chunk.num_cached_tokens} != {state.num_computed_tokens} "
            "tokens the shard has computed for this request"
        )
    if not chunk.input_ids:
        raise _Rejected("empty prompt chunk")
    _check_token_ids(chunk.input_ids, limits)
    if chunk.is_last_chunk:
        num_prompt_ids = len(state.prompt_ids) + len(chunk.input_ids)
        if state.params.resumed_generated_tokens > num_prompt_ids:
            raise _Rejected("resumed_generated_tokens exceeds the tokens sent for the request")
    sequence = ScheduledSequence(
        state=state,
        is_new=is_new,
        input_ids=tuple(chunk.input_ids),
        start_position=chunk.num_cached_tokens,
        block_table=tuple(chunk.block_table),
        is_prompt_chunk=True,
        samples=chunk.is_last_chunk,
    )
    _check_positions_and_blocks(sequence, limits)
    return sequence


def _plan_decode(entry: DecodeEntry, batch: BatchState, limits: StepLimits) -> ScheduledSequence:
    state = batch.get(entry.request_id)
    if state is None:
        raise _Rejected("unknown request (finished, released or never prefilled)")
    if not state.prompt_complete or not state.generated_ids:
        raise _Rejected("decode for a request whose prompt is not complete")
    sequence = ScheduledSequence(
        state=state,
        is_new=False,
        input_ids=(state.generated_ids[-1],),
        start_position=state.num_computed_tokens,
        block_table=tuple(entry.block_table),
        is_prompt_chunk=False,
        samples=True,
    )
    _check_positions_and_blocks(sequence, limits)
    return sequence


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
