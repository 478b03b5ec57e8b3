"""Driving `Engine.step` the way the router does, for tests.

A `ScriptedRequest` says when a request joins (step number) and how its prompt is cut into
chunks; `EngineDriver` runs steps until every request finished, building each step from the
running set (chunks of prefilling requests + one decode of every other live request) and
allocating KV blocks as sequences grow from a shuffled free list, so block tables are not
contiguous.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from ferrite_server.engine.engine import Engine
from ferrite_server.engine.types import (
    DecodeEntry,
    FinishReason,
    GeneratedToken,
    PrefillChunk,
    RequestParams,
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
    # Filled while driving:
    num_prompt_sent: int = 0
    num_chunks_sent: int = 0
    block_table: list[int] = field(default_factory=list)
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
    def __init__(self, engine: Engine, allocator: BlockAllocator) -> None:
        self.engine = engine
        self.allocator = allocator
        self.block_size = engine.info().block_size
        self.steps: list[StepRecord] = []

    def run(self, requests: Sequence[ScriptedRequest], max_steps: int = 200) -> None:
        for step_index in range(max_steps):
            if all(request.finished for request in requests):
                return
            self.run_step(step_index, requests)
        raise AssertionError(f"requests still running after {max_steps} steps")

    def run_step(self, step_index: int, requests: Sequence[ScriptedRequest]) -> None:
        chunks: list[PrefillChunk] = []
        decodes: list[DecodeEntry] = []
        for request in requests:
            if request.finished or request.join_step > step_index:
                continue
            if request.num_prompt_sent < len(request.prompt_ids):
                chunks.append(self._next_chunk(request))
            else:
                num_tokens = len(request.prompt_ids) + len(request.tokens)
                self.allocator.extend(request.block_table, num_tokens, self.block_size)
                decodes.append(DecodeEntry(request.request_id, tuple(request.block_table)))
        self.steps.append(
            StepRecord(
                step_index,
                tuple(chunk.request_id for chunk in chunks),
                tuple(decode.request_id for decode in decodes),
            )
        )
        output = self.engine.step(StepInput(chunks=tuple(chunks), decodes=tuple(decodes)))
        by_id = {request.request_id: request for request in requests}
        for generation in output.generations:
            assert not generation.error, generation.error
            request = by_id[generation.request_id]
            request.tokens.extend(generation.tokens)
            request.prompt_logprobs.extend(generation.prompt_logprobs)
            request.finish_reason = generation.finish_reason
            if request.finished:
                self.allocator.release(request.block_table)

    def _next_chunk(self, request: ScriptedRequest) -> PrefillChunk:
        size = request.next_chunk_size()
        start = request.num_prompt_sent
        end = start + size
        self.allocator.extend(request.block_table, end, self.block_size)
        chunk = PrefillChunk(
            request_id=request.request_id,
            input_ids=tuple(request.prompt_ids[start:end]),
            num_cached_tokens=start,
            block_table=tuple(request.block_table),
            is_last_chunk=end == len(request.prompt_ids),
            params=request.params if start == 0 else None,
        )
        request.num_prompt_sent = end
        request.num_chunks_sent += 1
        return chunk
