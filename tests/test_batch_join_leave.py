"""Requests join and leave a running batch; bad requests fail alone; the shard stops requests.

All on a tiny random-weight Llama; the expected tokens always come from another engine run
(alone / uninterrupted), never from hard-coded values.
"""

from __future__ import annotations

import json
from dataclasses import replace
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferrite_server.engine.engine import Engine
from ferrite_server.engine.model_runner import resolve_device
from ferrite_server.engine.errors import (
    InsufficientMemoryError,
    InvalidStepError,
    NotWarmedUpError,
)
from ferrite_server.engine.types import (
    DecodeEntry,
    FinishReason,
    Generation,
    PrefillChunk,
    RequestParams,
    SamplingParams,
    StepInput,
    StoppingParams,
)
from tests.support.engine_driver import BlockAllocator, EngineDriver, ScriptedRequest
from tests.support.engines import shard_config, warmed_up_engine
from tests.support.tiny_models import TINY_VOCAB_SIZE, TinyModelSpec, write_tiny_model
from tests.support.torch_threads import single_threaded_torch

PROMPT = [17, 33, 250, 7, 99, 100, 31, 45, 201, 64, 12]
OTHER_PROMPTS = [[40 + i for i in range(n)] for n in (3, 9, 17, 6)]
GREEDY = RequestParams(stopping=StoppingParams(max_new_tokens=8, ignore_eos=True))
SEEDED = RequestParams(
    sampling=SamplingParams(do_sample=True, temperature=0.9, top_k=40, seed=1234),
    stopping=StoppingParams(max_new_tokens=8, ignore_eos=True),
)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with single_threaded_torch():
        yield


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", TinyModelSpec(seed=11))


def _params(max_new_tokens: int, **overrides: object) -> RequestParams:
    return RequestParams(
        stopping=StoppingParams(max_new_tokens=max_new_tokens, ignore_eos=True), **overrides
    )


def _run_alone(model_dir: Path, prompt: list[int], params: RequestParams) -> list[int]:
    engine, num_blocks = warmed_up_engine(model_dir)
    request = ScriptedRequest(request_id=1, prompt_ids=prompt, params=params)
    EngineDriver(engine, BlockAllocator(num_blocks)).run([request])
    return request.generated_ids


def test_outputs_do_not_depend_on_who_else_is_in_the_batch(model_dir: Path) -> None:
    engine, num_blocks = warmed_up_engine(model_dir)
    greedy = ScriptedRequest(1, PROMPT, GREEDY, join_step=2, chunk_sizes=(4,))
    seeded = ScriptedRequest(2, PROMPT, SEEDED, join_step=4)
    others = [  # join at different steps, leave early (small max_new_tokens) or late
        ScriptedRequest(10 + i, prompt, _params(2 + 3 * i), join_step=i)
        for i, prompt in enumerate(OTHER_PROMPTS)
    ]
    driver = EngineDriver(engine, BlockAllocator(num_blocks, seed=3))
    driver.run([*others, greedy, seeded])
    assert len({len(step.decode_ids) for step in driver.steps}) > 2, "batch size never changed"
    assert greedy.generated_ids == _run_alone(model_dir, PROMPT, GREEDY)
    assert seeded.generated_ids == _run_alone(model_dir, PROMPT, SEEDED)
    assert all(r.finish_reason == FinishReason.LENGTH for r in [*others, greedy, seeded])


def _prefill(engine: Engine, request_id: int, block_table: tuple[int, ...]) -> Generation:
    chunk = PrefillChunk(request_id, tuple(PROMPT), 0, block_table, True, GREEDY)
    (generation,) = engine.step(StepInput(chunks=(chunk,))).generations
    return generation


def _decode(engine: Engine, *entries: DecodeEntry) -> dict[int, Generation]:
    output = engine.step(StepInput(decodes=entries))
    return {generation.request_id: generation for generation in output.generations}


def test_released_filtered_and_cleared_requests_are_forgotten(model_dir: Path) -> None:
    engine, _ = warmed_up_engine(model_dir)
    tables = {1: (0, 1, 2, 3), 2: (4, 5, 6, 7), 3: (8, 9, 10, 11)}
    for request_id, table in tables.items():
        assert _prefill(engine, request_id, table).tokens
    decodes = [DecodeEntry(rid, table) for rid, table in tables.items()]
    output = engine.step(StepInput(decodes=tuple(decodes[1:]), release_request_ids=(1,)))
    assert all(generation.tokens for generation in output.generations)
    assert "unknown request" in _decode(engine, decodes[0])[1].error
    engine.filter([2])
    results = _decode(engine, *decodes[1:])
    assert results[2].tokens and not results[2].error
    assert "unknown request" in results[3].error
    engine.clear()
    assert "unknown request" in _decode(engine, decodes[1])[2].error


def test_bad_requests_fail_alone_and_are_forgotten(model_dir: Path) -> None:
    engine, num_blocks = warmed_up_engine(model_dir)
    assert _prefill(engine, 7, (20, 21, 22, 23)).tokens  # known; its decode below is bad
    too_long = tuple(range(1, 200))  # the tiny model has 256 positions; blocks of 4
    chunks = (
        PrefillChunk(1, tuple(PROMPT), 0, (0, 1, 2), True, GREEDY),  # the good one
        PrefillChunk(2, tuple(PROMPT), 0, (3, 4, 5), True, None),  # no parameters
        PrefillChunk(3, tuple(PROMPT), 0, (6, 7), True, GREEDY),  # 11 tokens need 3 blocks
        PrefillChunk(4, tuple(PROMPT), 0, (8, 9, num_blocks), True, GREEDY),  # block id
        PrefillChunk(5, (1, TINY_VOCAB_SIZE), 0, (10,), True, GREEDY),  # token id
        PrefillChunk(6, too_long * 2, 0, tuple(range(30, 130)), True, GREEDY),  # positions
    )
    decodes = (DecodeEntry(7, (20, 21)), DecodeEntry(8, (24,)))  # too short; unknown id
    output = engine.step(StepInput(chunks=chunks, decodes=decodes))
    results = {generation.request_id: generation for generation in output.generations}
    assert len(results[1].tokens) == 1 and not results[1].error
    expected_errors = {
        2: "parameters",
        3: "block table",
        4: "block ids outside",
        5: "vocabulary",
        6: "positions",
        7: "block table",
        8: "unknown request",
    }
    for request_id, words in expected_errors.items():
        assert words in results[request_id].error, (request_id, results[request_id].error)
        assert not results[request_id].tokens
    assert "unknown request" in _decode(engine, DecodeEntry(7, (20, 21, 22, 23)))[7].error
    assert not _decode(engine, DecodeEntry(1, (0, 1, 2)))[1].error


def test_a_step_naming_a_request_twice_is_refused_whole(model_dir: Path) -> None:
    engine, _ = warmed_up_engine(model_dir)
    chunk = PrefillChunk(1, tuple(PROMPT), 0, (0, 1, 2), True, GREEDY)
    with pytest.raises(InvalidStepError, match="more than once"):
        engine.step(StepInput(chunks=(chunk,), decodes=(DecodeEntry(1, (0, 1, 2)),)))
    assert _prefill(engine, 1, (0, 1, 2)).tokens  # nothing was half-applied


def test_steps_before_warmup_are_refused(model_dir: Path) -> None:
    engine = Engine.load(shard_config(model_dir))
    with pytest.raises(NotWarmedUpError):
        engine.step(StepInput(decodes=(DecodeEntry(1, (0,)),)))


def test_warmup_explains_when_the_kv_cache_is_too_small(model_dir: Path) -> None:
    engine = Engine.load(replace(shard_config(model_dir), kv_cache_memory_bytes=4096))
    with pytest.raises(InsufficientMemoryError, match="max_total_tokens"):
        engine.warmup(max_batch_prefill_tokens=16, max_batch_size=2, max_total_tokens=128)


def test_a_preempted_request_resumes_where_it_stopped(model_dir: Path) -> None:
    uninterrupted = _run_alone(model_dir, PROMPT, _params(8))
    engine, num_blocks = warmed_up_engine(model_dir)
    first = ScriptedRequest(1, PROMPT, _params(8))
    driver = EngineDriver(engine, BlockAllocator(num_blocks))
    for step_index in range(3):  # prefill + 2 decodes: 3 tokens
        driver.run_step(step_index, [first])
    assert first.generated_ids == uninterrupted[:3]
    # The router preempts it (release) and later recomputes prompt + generated tokens.
    engine.step(StepInput(release_request_ids=(1,)))
    resumed_params = _params(8, resumed_generated_tokens=3)
    resumed = ScriptedRequest(1, PROMPT + first.generated_ids, resumed_params)
    EngineDriver(engine, BlockAllocator(num_blocks, seed=5)).run([resumed])
    assert resumed.generated_ids == uninterrupted[3:]  # max_new_tokens counts the resumed 3
    assert resumed.finish_reason == FinishReason.LENGTH


def test_eos_stops_a_request_unless_ignored(model_dir: Path, tmp_path: Path) -> None:
    first_token = _run_alone(model_dir, PROMPT, _params(1))[0]
    eos_dir = write_tiny_model(tmp_path / "eos", TinyModelSpec(seed=11))
    generation_config = json.loads((eos_dir / "generation_config.json").read_text())
    generation_config["eos_token_id"] = [first_token]  # the model's next token is now EOS
    (eos_dir / "generation_config.json").write_text(json.dumps(generation_config))
    stopping = StoppingParams(max_new_tokens=6)
    stops = ScriptedRequest(1, PROMPT, RequestParams(stopping=stopping))
    ignores = ScriptedRequest(2, PROMPT, _params(6))
    engine, num_blocks = warmed_up_engine(eos_dir)
    assert first_token in engine.info().eos_token_ids
    EngineDriver(engine, BlockAllocator(num_blocks)).run([stops, ignores])
    assert stops.generated_ids == [first_token]
    assert stops.finish_reason == FinishReason.EOS
    assert len(ignores.generated_ids) == 6 and ignores.finish_reason == FinishReason.LENGTH


def test_info_reports_the_checkpoint(model_dir: Path, tmp_path: Path) -> None:
    engine, _ = warmed_up_engine(model_dir, block_size_tokens=8)
    info = engine.info()
    device = str(resolve_device(shard_config(model_dir)))
    assert (info.architecture, info.dtype, info.device) == ("LlamaForCausalLM", "float32", device)
    assert (info.block_size, info.vocab_size, info.max_position_embeddings) == (8, 320, 256)
    assert info.eos_token_ids == (2, 5)  # config.json 2, generation_config.json [2, 5]
    mistral_dir = write_tiny_model(tmp_path / "mistral", TinyModelSpec(family="mistral"))
    # Served positions stop at Mistral's sliding window (128 < 256).
    assert Engine.load(shard_config(mistral_dir)).info().max_position_embeddings == 128
