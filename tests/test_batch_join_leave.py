"""Requests join and leave a running batch; bad requests fail alone; the shard stops requests.

All on a tiny random-weight Llama; the expected tokens always come from another engine run
(alone / uninterrupted), never from hard-coded values.
"""

from __future__ import annotations

import json
from dataclasses import replace
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
    FinishReason,
    Generation,
    NewRequest,
    RequestParams,
    RunningRequest,
    SamplingParams,
    StepInput,
    StoppingParams,
)
from tests.support.engine_driver import BlockAllocator, EngineDriver, ScriptedRequest
from tests.support.engines import shard_config, warmed_up_engine
from tests.support.tiny_models import TINY_VOCAB_SIZE, TinyModelSpec, write_tiny_model

PROMPT = [17, 33, 250, 7, 99, 100, 31, 45, 201, 64, 12]
OTHER_PROMPTS = [[40 + i for i in range(n)] for n in (3, 9, 17, 6)]
GREEDY = RequestParams(stopping=StoppingParams(max_new_tokens=8, ignore_eos=True))
SEEDED = RequestParams(
    sampling=SamplingParams(do_sample=True, temperature=0.9, top_k=40, seed=1234),
    stopping=StoppingParams(max_new_tokens=8, ignore_eos=True),
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def _new(
    request_id: int,
    block_table: tuple[int, ...],
    prompt: tuple[int, ...] = tuple(PROMPT),
    params: RequestParams | None = GREEDY,
    num_scheduled_tokens: int | None = None,
) -> NewRequest:
    """A whole prompt, nothing cached, computed at once unless num_scheduled_tokens says."""
    scheduled = len(prompt) if num_scheduled_tokens is None else num_scheduled_tokens
    return NewRequest(request_id, prompt, len(prompt), 0, scheduled, block_table, params)


def _prefill(
    engine: Engine, request_id: int, block_table: tuple[int, ...], **kwargs: object
) -> Generation:
    step = StepInput(new_requests=(_new(request_id, block_table, **kwargs),))
    (generation,) = engine.step(step).generations
    return generation


def _decode_of(generation: Generation) -> RunningRequest:
    """The next decode of the request `generation` came from: its sampled token, no new block."""
    return RunningRequest(generation.request_id, (generation.tokens[-1].token_id,), (), 1)


def _decode(engine: Engine, *entries: RunningRequest) -> dict[int, Generation]:
    output = engine.step(StepInput(running_requests=entries))
    return {generation.request_id: generation for generation in output.generations}


def test_released_filtered_and_cleared_requests_are_forgotten(model_dir: Path) -> None:
    engine, _ = warmed_up_engine(model_dir)
    tables = {1: (0, 1, 2, 3), 2: (4, 5, 6, 7), 3: (8, 9, 10, 11)}
    last = {rid: _prefill(engine, rid, table) for rid, table in tables.items()}
    assert all(generation.tokens for generation in last.values())
    decodes = (_decode_of(last[2]), _decode_of(last[3]))
    output = engine.step(StepInput(running_requests=decodes, release_request_ids=(1,)))
    assert all(generation.tokens for generation in output.generations)
    last.update({generation.request_id: generation for generation in output.generations})
    assert "unknown request" in _decode(engine, _decode_of(last[1]))[1].error
    engine.filter([2])
    results = _decode(engine, _decode_of(last[2]), _decode_of(last[3]))
    assert results[2].tokens and not results[2].error
    assert "unknown request" in results[3].error
    engine.clear()
    assert "unknown request" in _decode(engine, _decode_of(results[2]))[2].error


def test_bad_requests_fail_alone_and_are_forgotten(model_dir: Path) -> None:
    engine, num_blocks = warmed_up_engine(model_dir)
    # Known requests whose step below is bad: 7's 12 tokens fill its 3 blocks, so its decode
    # needs a new one; 9 computed 4 of its 11 prompt tokens; 11 is sent as new again.
    seventh = _prefill(engine, 7, (20, 21, 22), prompt=(*PROMPT, 5))
    assert seventh.tokens
    assert not _prefill(engine, 9, (24, 25, 26), num_scheduled_tokens=4).tokens
    assert _prefill(engine, 11, (27, 28, 29)).tokens
    too_long = tuple(range(1, 200))  # the tiny model has 256 positions; blocks of 4
    new_requests = (
        _new(1, (0, 1, 2)),  # the good one
        _new(2, (3, 4, 5), params=None),  # no parameters
        _new(3, (6, 7)),  # 11 tokens need 3 blocks
        _new(4, (8, 9, num_blocks)),  # block id
        _new(5, (10,), prompt=(1, TINY_VOCAB_SIZE)),  # token id
        _new(6, tuple(range(30, 130)), prompt=too_long * 2),  # positions
        replace(_new(10, (11, 12, 13)), num_prompt_tokens=len(PROMPT) + 1),  # prompt > tokens
        _new(11, (14, 15, 16)),  # the shard already holds 11
        _new(12, (17, 18, 19), num_scheduled_tokens=0),  # computes nothing
    )
    running = (
        _decode_of(seventh),  # 13 tokens, 3 blocks
        RunningRequest(9, (), (), 8),  # 4 + 8 tokens scheduled, the request has 11
        RunningRequest(8, (3,), (), 1),  # unknown id
    )
    output = engine.step(StepInput(new_requests=new_requests, running_requests=running))
    results = {generation.request_id: generation for generation in output.generations}
    assert len(results[1].tokens) == 1 and not results[1].error
    expected_errors = {
        2: "parameters",
        3: "block table",
        4: "block ids outside",
        5: "vocabulary",
        6: "positions",
        10: "num_prompt_tokens",
        11: "already holds",
        12: "no tokens scheduled",
        7: "block table",
        9: "the request has 11 tokens",
        8: "unknown request",
    }
    assert set(results) == {1, *expected_errors}
    for request_id, words in expected_errors.items():
        assert words in results[request_id].error, (request_id, results[request_id].error)
        assert not results[request_id].tokens
    # Every rejected request is forgotten, 11 too (router and shard disagreed about it).
    with_block = replace(_decode_of(seventh), new_block_ids=(23,))
    assert "unknown request" in _decode(engine, with_block)[7].error
    assert "unknown request" in _decode(engine, RunningRequest(9, (), (), 7))[9].error
    assert "unknown request" in _decode(engine, RunningRequest(11, (3,), (), 1))[11].error
    assert not _decode(engine, _decode_of(results[1]))[1].error


def test_a_step_naming_a_request_twice_is_refused_whole(model_dir: Path) -> None:
    engine, _ = warmed_up_engine(model_dir)
    twice = StepInput(
        new_requests=(_new(1, (0, 1, 2)),), running_requests=(RunningRequest(1, (3,), (), 1),)
    )
    with pytest.raises(InvalidStepError, match="more than once"):
        engine.step(twice)
    assert _prefill(engine, 1, (0, 1, 2)).tokens  # nothing was half-applied


def test_steps_before_warmup_are_refused(model_dir: Path) -> None:
    engine = Engine.load(shard_config(model_dir))
    with pytest.raises(NotWarmedUpError):
        engine.step(StepInput(running_requests=(RunningRequest(1, (3,), (), 1),)))


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
    resumed = ScriptedRequest(
        1, PROMPT + first.generated_ids, _params(8), num_prompt_tokens=len(PROMPT)
    )
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
    # The whole context is served: attention applies Mistral's 8-token window.
    assert Engine.load(shard_config(mistral_dir)).info().max_position_embeddings == 256
