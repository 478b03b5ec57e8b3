"""Asynchronous scheduling on the engine: a running request told `append_generated_tokens`
(the router planned its step before it saw the previous generation) gets exactly the tokens it
gets when the router sends those tokens back itself — greedy and seeded sampling with
penalties, a chunked prompt, n-gram and draft-model speculation, and grammar-constrained
requests — and the flag's misuses reject only the request that carries them.

Tiny random-weight Llama, except for grammars (they need the bundled model's tokenizer).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from ferrite_server.engine.types import (
    FinishReason,
    Grammar,
    NewRequest,
    RequestParams,
    RunningRequest,
    SamplingParams,
    StepInput,
    StoppingParams,
)
from tests.support.draft_models import write_truncated_model
from tests.support.engine_driver import BlockAllocator, EngineDriver, ScriptedRequest
from tests.support.engines import warmed_up_engine
from tests.support.tiny_models import TinyModelSpec, write_tiny_model

PROMPTS = [
    [12, 40, 41, 42, 43, 12, 40, 41],
    [100, 101, 102, 100, 101, 102, 100],
    [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 7, 8, 9],
]
CHUNKS = [(), (), (5, 4)]  # the third prompt is prefilled in chunks beside decodes
PENALTIES = {"repetition_penalty": 1.3, "frequency_penalty": 0.4, "presence_penalty": 0.2}
NUM_LOOKAHEAD_TOKENS = 3

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("append-generated")
    target = write_tiny_model(root / "target", TinyModelSpec(seed=11))
    return {"target": target, "draft": write_truncated_model(target, root / "draft", 1)}


def _params(max_new_tokens: int = 10, **sampling: Any) -> RequestParams:
    return RequestParams(
        sampling=SamplingParams(**sampling),
        stopping=StoppingParams(max_new_tokens=max_new_tokens, ignore_eos=True),
        top_n_tokens=2,
    )


PARAMS = [
    _params(),  # greedy
    _params(do_sample=True, temperature=0.9, top_k=40, seed=1234, **PENALTIES),
    _params(repetition_penalty=1.2),  # greedy with a penalty, prompt chunked
]


def _run(
    model_dir: Path,
    append_generated_tokens: bool,
    params: list[RequestParams],
    prompts: list[list[int]],
    num_lookahead_tokens: int = 0,
    **engine_options: Any,
) -> list[ScriptedRequest]:
    engine, num_blocks = warmed_up_engine(model_dir, **engine_options)
    requests = [
        ScriptedRequest(request_id=index + 1, prompt_ids=prompt, params=param,
                        join_step=index % 2, chunk_sizes=CHUNKS[index] if index < len(CHUNKS) else ())
        for index, (prompt, param) in enumerate(zip(prompts, params, strict=True))
    ]
    driver = EngineDriver(engine, BlockAllocator(num_blocks), num_lookahead_tokens,
                          append_generated_tokens=append_generated_tokens)
    driver.run(requests)
    return requests


def _assert_same(sent: list[ScriptedRequest], appended: list[ScriptedRequest]) -> None:
    for by_router, by_shard in zip(sent, appended, strict=True):
        assert by_shard.generated_ids == by_router.generated_ids, f"request {by_router.request_id}"
        assert [t.logprob for t in by_shard.tokens] == [t.logprob for t in by_router.tokens]
        assert by_shard.tokens_per_step == by_router.tokens_per_step
        assert by_shard.finish_reason == by_router.finish_reason == FinishReason.LENGTH


@pytest.mark.parametrize("speculation", ["none", "ngram", "draft"])
def test_appending_its_own_tokens_equals_being_sent_them(
    models: dict[str, Path], speculation: str
) -> None:
    options: dict[str, Any] = {}
    lookahead = 0
    if speculation == "ngram":
        options, lookahead = {"speculative_method": "ngram"}, NUM_LOOKAHEAD_TOKENS
    elif speculation == "draft":
        options = {"speculative_method": "draft", "draft_model_id": models["draft"]}
        lookahead = NUM_LOOKAHEAD_TOKENS
    sent = _run(models["target"], False, PARAMS, PROMPTS, lookahead, **options)
    appended = _run(models["target"], True, PARAMS, PROMPTS, lookahead, **options)
    _assert_same(sent, appended)
    if speculation != "none":  # the flag carried multi-token generations too
        assert any(n > 1 for request in appended for n in request.tokens_per_step)


@pytest.mark.parametrize("kind", ["regex", "json"])
def test_a_grammar_follows_the_tokens_the_shard_appends(default_model_dir: Path, kind: str) -> None:
    tokenizer = Tokenizer.from_file(str(default_model_dir / "tokenizer.json"))
    prompt = tokenizer.encode("Answer yes or no, then a number.", add_special_tokens=False).ids
    regex = r"(yes|no), [0-9]{2,3}"
    grammar = (Grammar(kind="regex", value=regex) if kind == "regex"
               else Grammar(kind="json", value='{"type": "object", "properties": {"ok": {"type": "boolean"}}, '
                                               '"required": ["ok"], "additionalProperties": false}'))
    params = [
        RequestParams(sampling=SamplingParams(grammar=grammar), stopping=StoppingParams(max_new_tokens=16)),
        RequestParams(sampling=SamplingParams(grammar=grammar, do_sample=True, seed=5, repetition_penalty=1.1),
                      stopping=StoppingParams(max_new_tokens=16)),
    ]
    runs = []
    for append in (False, True):
        engine, num_blocks = warmed_up_engine(default_model_dir)
        requests = [ScriptedRequest(request_id=i + 1, prompt_ids=prompt, params=p) for i, p in enumerate(params)]
        EngineDriver(engine, BlockAllocator(num_blocks), append_generated_tokens=append).run(requests)
        runs.append(requests)
    sent, appended = runs
    for by_router, by_shard in zip(sent, appended, strict=True):
        assert by_shard.generated_ids == by_router.generated_ids
        assert by_shard.finish_reason == by_router.finish_reason == FinishReason.EOS
        text = tokenizer.decode(by_shard.generated_ids[:-1])
        assert re.fullmatch(regex, text) if kind == "regex" else text.replace(" ", "") in (
            '{"ok":true}', '{"ok":false}'), text


def _new(request_id: int, prompt: list[int], blocks: tuple[int, ...], scheduled: int | None = None) -> NewRequest:
    return NewRequest(request_id=request_id, token_ids=tuple(prompt), num_prompt_tokens=len(prompt),
                      num_cached_tokens=0, num_scheduled_tokens=len(prompt) if scheduled is None else scheduled,
                      block_table=blocks, params=_params())


def _running(request_id: int, num_scheduled_tokens: int = 1, new_token_ids: tuple[int, ...] = (),
             append: bool = True) -> RunningRequest:
    return RunningRequest(request_id=request_id, new_token_ids=new_token_ids, new_block_ids=(),
                          num_scheduled_tokens=num_scheduled_tokens, append_generated_tokens=append)


def test_misused_flags_reject_only_their_request(models: dict[str, Path]) -> None:
    engine, _ = warmed_up_engine(models["target"])
    first = engine.step(StepInput(new_requests=(
        _new(1, PROMPTS[0], (0, 1, 2)),             # whole prompt: samples
        _new(2, PROMPTS[0], (3, 4, 5)),             # whole prompt: samples
        _new(3, PROMPTS[2], (6, 7, 8, 9), scheduled=5),  # a chunk that is not the last
        _new(4, PROMPTS[1], (10, 11, 12)),          # whole prompt: samples
    )))
    sampled = {g.request_id: g.tokens[0].token_id for g in first.generations if g.tokens}
    assert sorted(sampled) == [1, 2, 4]
    second = engine.step(StepInput(running_requests=(
        _running(1),                                       # fine
        _running(2, new_token_ids=(sampled[2],)),          # both the tokens and the flag
        _running(3, num_scheduled_tokens=8),               # nothing was generated to append
        _running(99),                                      # never sent as new
        _running(4, new_token_ids=(sampled[4],), append=False),  # the router's own way, beside
    )))
    errors = {g.request_id: g.error for g in second.generations}
    assert errors[1] == "" and errors[4] == ""
    assert "not both" in errors[2]
    assert "generated no tokens" in errors[3]
    assert "unknown request" in errors[99]
    # The rejected ones are forgotten; the others keep decoding either way.
    third = engine.step(StepInput(running_requests=(_running(1), _running(2), _running(4))))
    errors = {g.request_id: g.error for g in third.generations}
    assert errors[1] == "" and errors[4] == "" and "unknown request" in errors[2]


def test_a_flag_needs_a_new_generation_each_time(models: dict[str, Path]) -> None:
    """A step that computes only part of what the router appended samples nothing, so the
    following step has nothing to append."""
    engine, _ = warmed_up_engine(models["target"])
    first = engine.step(StepInput(new_requests=(_new(1, PROMPTS[0], (0, 1, 2)),)))
    token = first.generations[0].tokens[0].token_id
    # The router appends two tokens (its own + one more) but schedules only the first.
    partial = engine.step(StepInput(running_requests=(
        _running(1, new_token_ids=(token, 7), append=False),)))
    assert partial.generations[0].tokens == () and not partial.generations[0].error
    rejected = engine.step(StepInput(running_requests=(_running(1),)))
    assert "generated no tokens" in rejected.generations[0].error
