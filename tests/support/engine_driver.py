"""Driving `Engine.step` the way the router does, for tests.

A `ScriptedRequest` says when a request joins (step number) and how its prompt is cut into
chunks; `EngineDriver` runs steps until every request finished, building each step from the
running set (chunks of prefilling requests + one decode of every other live request) as the
router does: a request's first step sends it whole (`NewRequest`), later ones only what
changed (`RunningRequest`: the token sampled last, new block ids; or, driven as an
asynchronous-scheduling router, no token and `append_generated_tokens`). KV blocks are
allocated as sequences grow from a shuffled free list, so block tables are not contiguous.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ferrite_server.engine.engine import Engine
from ferrite_server.engine.types import (
    FinishReason,
    GeneratedToken,
    NewRequest,
    RequestParams,
    RunningRequest,
    StepInput,
)


class BlockAllocator:
    """A list of free block ids; blocks go back when their request finishes."""

    def __init__(self, num_blocks: int, seed: int = 0) -> None:
        self.free = list(range(num_blocks))
        random.Random(seed).shuffle(self.free)

    def extend(self, block_table: list[int], num_tokens: int, block_size: int) -> None:
        """Grow block_table until it covers num_tokens."""
        while len(block_table) * block_size < num_tokens:
            block_table.append(self.free.pop())

    def release(self, block_table: list[int]) -> None:
        self.free.extend(block_table)
        block_table.clear()


@dataclass
class ScriptedRequest:
    request_id: int
    prompt_ids: list[int]
    params: RequestParams
    join_step: int = 0
    chunk_sizes: Sequence[int] = ()  # empty: the whole prompt in one chunk
    # prompt_ids[num_prompt_tokens:] were generated before a preemption (None: all prompt).
    num_prompt_tokens: int | None = None
    # Filled while driving:
    num_prompt_sent: int = 0
    num_chunks_sent: int = 0
    block_table: list[int] = field(default_factory=list)
    num_blocks_sent: int = 0  # of block_table, as the engine knows it
    num_generated_sent: int = 0  # of tokens, sent back to the engine
    tokens_per_step: list[int] = field(default_factory=list)  # tokens each decode produced
    tokens: list[GeneratedToken] = field(default_factory=list)
    prompt_logprobs: list[float] = field(default_factory=list)
    finish_reason: FinishReason = FinishReason.NONE

    @property
    def generated_ids(self) -> list[int]:
        return [token.token_id for token in self.tokens]

    @property
    def finished(self) -> bool:
        return self.finish_reason != FinishReason.NONE

    def next_chunk_size(self) -> int:
        remaining = len(self.prompt_ids) - self.num_prompt_sent
        if self.num_chunks_sent < len(self.chunk_sizes):
            return min(self.chunk_sizes[self.num_chunks_sent], remaining)
        return remaining


@dataclass(frozen=True)
class StepRecord:
    step_index: int
    chunk_ids: tuple[int, ...]
    decode_ids: tuple[int, ...]


class EngineDriver:
    def __init__(
        self,
        engine: Engine,
        allocator: BlockAllocator,
        num_lookahead_tokens: int = 0,
        append_generated_tokens: bool = False,
    ) -> None:
        """num_lookahead_tokens: KV slots reserved after each decode for proposals (the
        router's --speculate), within what max_new_tokens leaves. append_generated_tokens:
        decodes ask the engine to append what it generated last instead of sending it."""
        self.engine = engine
        self.allocator = allocator
        self.num_lookahead_tokens = num_lookahead_tokens
        self.append_generated_tokens = append_generated_tokens
        self.block_size = engine.info().block_size
        self.steps: list[StepRecord] = []

    def run(self, requests: Sequence[ScriptedRequest], max_steps: int = 200) -> None:
        for step_index in range(max_steps):
            if all(request.finished for request in requests):
                return
            self.run_step(step_index, requests)
        raise AssertionError(f"requests still running after {max_steps} steps")

    def run_step(self, step_index: int, requests: Sequence[ScriptedRequest]) -> None:
        new_requests: list[NewRequest] = []
        running: list[RunningRequest] = []
        chunk_ids: list[int] = []
        decode_ids: list[int] = []
        for request in requests:
            if request.finished or request.join_step > step_index:
                continue
            if request.num_prompt_sent < len(request.prompt_ids):
                chunk_ids.append(request.request_id)
                entry = self._next_chunk(request)
            else:
                decode_ids.append(request.request_id)
                entry = self._decode(request)
            if isinstance(entry, NewRequest):
                new_requests.append(entry)
            else:
                running.append(entry)
        self.steps.append(StepRecord(step_index, tuple(chunk_ids), tuple(decode_ids)))
        step = StepInput(new_requests=tuple(new_requests), running_requests=tuple(running))
        output = self.engine.step(step)
        by_id = {request.request_id: request for request in requests}
        for generation in output.generations:
            assert not generation.error, generation.error
            request = by_id[generation.request_id]
            if generation.request_id in decode_ids:
                request.tokens_per_step.append(len(generation.tokens))
            request.tokens.extend(generation.tokens)
            request.prompt_logprobs.extend(generation.prompt_logprobs)
            request.finish_reason = generation.finish_reason
            if request.finished:
                self.allocator.release(request.block_table)

    def _next_chunk(self, request: ScriptedRequest) -> NewRequest | RunningRequest:
        size = request.next_chunk_size()
        start = request.num_prompt_sent
        end = start + size
        self.allocator.extend(request.block_table, end, self.block_size)
        request.num_prompt_sent = end
        request.num_chunks_sent += 1
        if start == 0:
            request.num_blocks_sent = len(request.block_table)
            num_prompt = request.num_prompt_tokens
            return NewRequest(
                request_id=request.request_id,
                token_ids=tuple(request.prompt_ids),
                num_prompt_tokens=len(request.prompt_ids) if num_prompt is None else num_prompt,
                num_cached_tokens=0,
                num_scheduled_tokens=size,
                block_table=tuple(request.block_table),
                params=request.params,
            )
        return self._running(request, new_token_ids=(), num_scheduled_tokens=size)

    def _decode(self, request: ScriptedRequest) -> RunningRequest:
        num_tokens = len(request.prompt_ids) + len(request.tokens)
        # After this step at most max_new_tokens may exist: reserve no more.
        room = request.params.stopping.max_new_tokens - len(request.tokens) - 1
        num_lookahead = max(0, min(self.num_lookahead_tokens, room))
        self.allocator.extend(request.block_table, num_tokens + num_lookahead, self.block_size)
        new_token_ids = tuple(request.generated_ids[request.num_generated_sent :])
        request.num_generated_sent = len(request.tokens)
        if self.append_generated_tokens:
            return replace(
                self._running(request, (), 1, num_lookahead), append_generated_tokens=True
            )
        return self._running(request, new_token_ids, 1, num_lookahead)

    @staticmethod
    def _running(
        request: ScriptedRequest,
        new_token_ids: tuple[int, ...],
        num_scheduled_tokens: int,
        num_lookahead_tokens: int = 0,
    ) -> RunningRequest:
        new_block_ids = tuple(request.block_table[request.num_blocks_sent :])
        request.num_blocks_sent = len(request.block_table)
        return RunningRequest(
            request_id=request.request_id,
            new_token_ids=new_token_ids,
            new_block_ids=new_block_ids,
            num_scheduled_tokens=num_scheduled_tokens,
            num_lookahead_tokens=num_lookahead_tokens,
        )
