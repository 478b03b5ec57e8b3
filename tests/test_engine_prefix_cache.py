"""Prefix-cache hits on the engine: a NewRequest whose leading blocks already hold its first
tokens' K/V (written by another request) computes only the rest, samples as if it had
computed everything, and does not disturb the request that wrote those blocks.

Tiny random-weight Llama, blocks of 4 tokens. The expected tokens always come from the same
prompt computed from scratch (nothing cached, fresh blocks) in a fresh engine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ferrite_server.engine.engine import Engine
from ferrite_server.engine.types import (
    FinishReason,
    GeneratedToken,
    NewRequest,
    RequestParams,
    RunningRequest,
    SamplingParams,
    StepInput,
    StoppingParams,
)
from tests.support.engine_driver import BlockAllocator, EngineDriver, ScriptedRequest
from tests.support.engines import warmed_up_engine
from tests.support.tiny_models import TinyModelSpec, write_tiny_model

BLOCK_SIZE = 4  # warmed_up_engine's default
NUM_SHARED_BLOCKS = 2
# Two whole blocks. With this model, the greedy pick after PREFIX + SUFFIX is one of PREFIX's
# tokens (the penalty test checks that it still is).
PREFIX = [147, 76, 267, 192, 77, 62, 263, 167]
SUFFIX = [166, 41, 187, 101]
WRITER_PROMPT = PREFIX + [5, 88, 19, 230, 14, 71]  # the request that computes PREFIX first
LOGPROB_TOLERANCE = 1e-4  # float32; cached K/V vs K/V computed in the same forward


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", TinyModelSpec(seed=11))


def _params(max_new_tokens: int, **sampling: float) -> RequestParams:
    return RequestParams(
        sampling=SamplingParams(**sampling),
        stopping=StoppingParams(max_new_tokens=max_new_tokens, ignore_eos=True),
    )


def _from_scratch(
    model_dir: Path, prompt: list[int], params: RequestParams
) -> list[GeneratedToken]:
    engine, num_blocks = warmed_up_engine(model_dir)
    request = ScriptedRequest(request_id=1, prompt_ids=prompt, params=params)
    EngineDriver(engine, BlockAllocator(num_blocks)).run([request])
    return request.tokens


def _cache_hit(
    request_id: int, prompt: list[int], block_table: list[int], params: RequestParams
) -> NewRequest:
    """The whole prompt; its first NUM_SHARED_BLOCKS blocks cached, the rest computed now."""
    num_cached = NUM_SHARED_BLOCKS * BLOCK_SIZE
    num_computed = len(prompt) - num_cached
    return NewRequest(
        request_id, tuple(prompt), len(prompt), num_cached, num_computed, tuple(block_table), params
    )


def _step(engine: Engine, step: StepInput, requests: list[ScriptedRequest]) -> None:
    """A step sent by hand; its results recorded as the driver would."""
    by_id = {request.request_id: request for request in requests}
    for generation in engine.step(step).generations:
        assert not generation.error, generation.error
        by_id[generation.request_id].tokens.extend(generation.tokens)
        by_id[generation.request_id].finish_reason = generation.finish_reason


def _driven_from_now_on(request: ScriptedRequest) -> ScriptedRequest:
    """Mark a request whose NewRequest was sent by hand as sent, so the driver decodes it."""
    request.num_prompt_sent, request.num_chunks_sent = len(request.prompt_ids), 1
    request.num_blocks_sent = len(request.block_table)
    return request


def _ids(tokens: list[GeneratedToken]) -> list[int]:
    return [token.token_id for token in tokens]


def test_a_prefix_cache_hit_samples_as_if_computed_from_scratch(model_dir: Path) -> None:
    engine, num_blocks = warmed_up_engine(model_dir)
    driver = EngineDriver(engine, BlockAllocator(num_blocks, seed=7))
    writer = ScriptedRequest(1, WRITER_PROMPT, _params(8))
    # Whole tables up front: no block goes back to the free list and out again while shared.
    driver.allocator.extend(writer.block_table, len(WRITER_PROMPT) + 8, BLOCK_SIZE)
    for step_index in range(2):  # its prompt, then one decode
        driver.run_step(step_index, [writer])
    reader = ScriptedRequest(2, PREFIX + SUFFIX, _params(6))
    reader.block_table = writer.block_table[:NUM_SHARED_BLOCKS]
    driver.allocator.extend(reader.block_table, len(reader.prompt_ids) + 6, BLOCK_SIZE)
    # The hit joins in the same forward as the writer's next decode.
    hit = _cache_hit(2, reader.prompt_ids, reader.block_table, reader.params)
    writer_decode = RunningRequest(1, (writer.tokens[-1].token_id,), (), 1)
    writer.num_generated_sent = len(writer.tokens)  # sent by hand here, not by the driver
    step = StepInput(new_requests=(hit,), running_requests=(writer_decode,))
    _step(engine, step, [writer, reader])
    driver.run([writer, _driven_from_now_on(reader)])

    expected = _from_scratch(model_dir, PREFIX + SUFFIX, reader.params)
    assert _ids(reader.tokens) == _ids(expected)
    assert [t.logprob for t in reader.tokens] == pytest.approx(
        [t.logprob for t in expected], abs=LOGPROB_TOLERANCE
    )
    assert _ids(writer.tokens) == _ids(_from_scratch(model_dir, WRITER_PROMPT, writer.params))
    assert writer.finish_reason == reader.finish_reason == FinishReason.LENGTH
    # Control: the same hit over blocks that do not hold PREFIX's K/V comes out different, so
    # the match above came from reading the shared blocks, not from recomputing the prefix.
    wrong_blocks = driver.allocator.free[:NUM_SHARED_BLOCKS] + driver.allocator.free[-3:]
    assert not set(wrong_blocks) & set(writer.block_table + reader.block_table)
    control = ScriptedRequest(3, PREFIX + SUFFIX, _params(1))
    wrong_hit = _cache_hit(3, PREFIX + SUFFIX, wrong_blocks, control.params)
    _step(engine, StepInput(new_requests=(wrong_hit,)), [control])
    assert control.tokens[0].logprob != pytest.approx(expected[0].logprob, abs=1e-2)


def test_repetition_penalty_sees_the_cached_part_of_the_prompt(model_dir: Path) -> None:
    penalized = _params(4, repetition_penalty=1.5)
    prompt = PREFIX + SUFFIX
    plain_first = _from_scratch(model_dir, prompt, _params(1))[0].token_id
    expected = _ids(_from_scratch(model_dir, prompt, penalized))
    # Meaningful only if the penalty on a cached token decides the first pick: a shard that
    # penalized only the computed part would then pick plain_first.
    assert plain_first in PREFIX and plain_first not in SUFFIX and expected[0] != plain_first

    engine, num_blocks = warmed_up_engine(model_dir)
    shared = [9, 5]
    num = len(PREFIX)
    writer = NewRequest(1, tuple(PREFIX), num, 0, num, tuple(shared), _params(1))
    (written,) = engine.step(StepInput(new_requests=(writer,))).generations
    assert written.finish_reason == FinishReason.LENGTH  # finished; its blocks keep the K/V
    reader = ScriptedRequest(2, prompt, penalized, block_table=[*shared, 14, 2, 11])
    hit = _cache_hit(2, prompt, reader.block_table, penalized)
    _step(engine, StepInput(new_requests=(hit,)), [reader])
    EngineDriver(engine, BlockAllocator(num_blocks)).run([_driven_from_now_on(reader)])
    assert _ids(reader.tokens) == expected
