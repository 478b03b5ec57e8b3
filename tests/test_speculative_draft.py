"""Draft-model speculation on the engine (`speculative_method="draft"`), driven as the router
drives it, on a tiny Llama: greedy tokens, logprobs and top alternatives equal a run without
speculation (penalties, concurrent requests joining at different steps, a prompt chunked
beside decodes); max_new_tokens ends an accepted run exactly; seeded sampling repeats whatever
the batch; sampled tokens carry the target's logprobs; the draft's KV cache is counted in the
warmup's budget; a draft with another vocabulary is refused.

Drafts: the target itself (every proposal right) and the target cut to its first layer.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ferrite_server.engine.engine import Engine
from ferrite_server.engine.errors import UnsupportedModelError
from ferrite_server.engine.speculative.vocabulary import check_same_vocabulary
from ferrite_server.engine.types import (
    FinishReason,
    RequestParams,
    SamplingParams,
    StoppingParams,
)
from tests.support.draft_models import write_truncated_model
from tests.support.engine_driver import BlockAllocator, EngineDriver, ScriptedRequest
from tests.support.engines import TEST_KV_CACHE_BYTES, shard_config, warmed_up_engine
from tests.support.tiny_models import TinyModelSpec, write_tiny_model

NUM_LOOKAHEAD_TOKENS = 3
LOGPROB_TOLERANCE = 1e-4  # float32: a row of a multi-token forward vs a one-token decode
PROMPTS = [
    [12, 40, 41, 42, 43, 12, 40, 41],
    [100, 101, 102, 100, 101, 102, 100],
    [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 7, 8, 9, 10, 11, 12, 13],
    [250, 3, 250, 3, 250],
]
CHUNKS = [(), (), (5, 4), ()]  # the third prompt is prefilled in chunks beside decodes


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("draft")
    target = write_tiny_model(root / "target", TinyModelSpec(seed=11))
    return {"target": target, "first_layer": write_truncated_model(target, root / "first", 1)}


def _params(max_new_tokens: int, top_n_tokens: int = 2, **sampling: float) -> RequestParams:
    return RequestParams(
        sampling=SamplingParams(**sampling),
        stopping=StoppingParams(max_new_tokens=max_new_tokens, ignore_eos=True),
        top_n_tokens=top_n_tokens,
    )


def _run(
    target: Path, params: list[RequestParams], draft: Path | None, join_steps: tuple[int, ...] = (0, 1, 0, 3)
) -> list[ScriptedRequest]:
    speculation = {} if draft is None else dict(speculative_method="draft", draft_model_id=draft)
    engine, num_blocks = warmed_up_engine(target, **speculation)
    requests = [
        ScriptedRequest(request_id=index + 1, prompt_ids=PROMPTS[index], params=param,
                        join_step=join_steps[index], chunk_sizes=CHUNKS[index])
        for index, param in enumerate(params)
    ]
    lookahead = 0 if draft is None else NUM_LOOKAHEAD_TOKENS
    EngineDriver(engine, BlockAllocator(num_blocks), num_lookahead_tokens=lookahead).run(requests)
    return requests


def _assert_same_tokens(expected: list[ScriptedRequest], actual: list[ScriptedRequest]) -> None:
    for reference, speculative in zip(expected, actual, strict=True):
        assert speculative.generated_ids == reference.generated_ids, f"request {reference.request_id}"
        for ref_token, spec_token in zip(reference.tokens, speculative.tokens, strict=True):
            assert spec_token.logprob == pytest.approx(ref_token.logprob, abs=LOGPROB_TOLERANCE)
            assert [t for t, _ in spec_token.top_tokens] == [t for t, _ in ref_token.top_tokens]
        assert speculative.finish_reason == reference.finish_reason == FinishReason.LENGTH


def _num_multi_token_steps(requests: list[ScriptedRequest]) -> int:
    return sum(count > 1 for request in requests for count in request.tokens_per_step)


@pytest.mark.parametrize("draft", ["target", "first_layer"])
def test_greedy_draft_speculation_gives_the_same_tokens(models, draft: str) -> None:
    params = [
        _params(24),
        _params(24, repetition_penalty=1.3),
        _params(24, frequency_penalty=0.5, presence_penalty=0.3),
        _params(24, top_n_tokens=5),
    ]
    reference = _run(models["target"], params, draft=None)
    speculative = _run(models["target"], params, draft=models[draft])
    _assert_same_tokens(reference, speculative)
    assert _num_multi_token_steps(speculative) > 0, "no proposal was ever accepted"
    assert max(c for r in speculative for c in r.tokens_per_step) <= 1 + NUM_LOOKAHEAD_TOKENS
    if draft == "target":  # the draft is right every time: each decode yields 1 + lookahead
        assert all(c == 1 + NUM_LOOKAHEAD_TOKENS for r in speculative for c in r.tokens_per_step[:-1])


def test_max_new_tokens_ends_an_accepted_run_exactly(models) -> None:
    for max_new_tokens in (2, 5, 9):
        params = [_params(max_new_tokens) for _ in PROMPTS]
        reference = _run(models["target"], params, draft=None)
        speculative = _run(models["target"], params, draft=models["target"])
        _assert_same_tokens(reference, speculative)
        assert all(len(request.tokens) == max_new_tokens for request in speculative)


def _sampled_params() -> list[RequestParams]:
    return [
        _params(20, do_sample=True, temperature=0.8, seed=5),
        _params(20, do_sample=True, temperature=0.6, top_k=20, seed=6, repetition_penalty=1.1),
        _params(20),  # greedy beside sampled rows
        _params(20, do_sample=True, temperature=0.9, top_p=0.9, seed=7, frequency_penalty=0.2),
    ]


def test_seeded_sampling_repeats_whatever_the_batch(models) -> None:
    together = _run(models["target"], _sampled_params(), models["first_layer"])
    again = _run(models["target"], _sampled_params(), models["first_layer"], join_steps=(2, 0, 1, 0))
    assert [r.generated_ids for r in again] == [r.generated_ids for r in together]
    assert _num_multi_token_steps(together) > 0
    plain = _run(models["target"], _sampled_params(), draft=None)
    assert together[2].generated_ids == plain[2].generated_ids  # the greedy one


def test_sampled_tokens_carry_the_targets_logprobs(models) -> None:
    speculative = _run(models["target"], _sampled_params(), models["first_layer"])
    # The target's log-probabilities of the same tokens, scored as a prompt by a plain engine.
    engine, num_blocks = warmed_up_engine(models["target"])
    scored = [
        ScriptedRequest(request_id=r.request_id, prompt_ids=PROMPTS[i] + r.generated_ids,
                        params=RequestParams(stopping=StoppingParams(max_new_tokens=1),
                                             prompt_logprobs=True))
        for i, r in enumerate(speculative)
    ]
    EngineDriver(engine, BlockAllocator(num_blocks)).run(scored)
    for request, reference in zip(speculative, scored, strict=True):
        expected = reference.prompt_logprobs[len(PROMPTS[request.request_id - 1]):]
        got = [token.logprob for token in request.tokens]
        assert got == pytest.approx(expected, abs=LOGPROB_TOLERANCE)


def test_the_draft_cache_shares_the_kv_budget(models) -> None:
    plain, plain_blocks = warmed_up_engine(models["target"])
    with_draft, draft_blocks = warmed_up_engine(
        models["target"], speculative_method="draft", draft_model_id=models["first_layer"]
    )
    # Target 2 layers + draft 1 layer of the same shape: a block costs 1.5 times as much.
    assert draft_blocks == TEST_KV_CACHE_BYTES // (TEST_KV_CACHE_BYTES // plain_blocks * 3 // 2)
    result = with_draft.warmup(max_batch_prefill_tokens=64, max_batch_size=8, max_total_tokens=128)
    assert result.num_blocks == draft_blocks
    assert result.kv_cache_memory_bytes <= TEST_KV_CACHE_BYTES


def test_a_draft_with_another_vocabulary_is_refused(models, tmp_path: Path) -> None:
    from tests.support.tiny_models import tiny_config
    from transformers import AutoModelForCausalLM

    config = tiny_config(TinyModelSpec(seed=3))
    config.vocab_size = 300
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "small-vocab")
    draft_config = replace(
        shard_config(models["target"]), speculative_method="draft",
        draft_model_id=tmp_path / "small-vocab",
    )
    with pytest.raises(UnsupportedModelError, match="vocabulary of 300 tokens, the target 320"):
        Engine.load(draft_config)


def _write_tokenizer(model_dir: Path, tokens: list[str]) -> None:
    from tokenizers import Tokenizer, models

    vocab = {token: token_id for token_id, token in enumerate(tokens)}
    Tokenizer(models.WordLevel(vocab=vocab, unk_token=tokens[0])).save(str(model_dir / "tokenizer.json"))


def test_a_draft_with_another_tokenizer_is_refused(tmp_path: Path) -> None:
    target, draft = tmp_path / "target", tmp_path / "draft"
    target.mkdir()
    draft.mkdir()
    _write_tokenizer(target, ["<unk>", "a", "b", "c"])
    _write_tokenizer(draft, ["<unk>", "a", "b", "c"])
    check_same_vocabulary(target, draft, 4, 4)
    _write_tokenizer(draft, ["<unk>", "b", "a", "c"])
    with pytest.raises(UnsupportedModelError, match="2 tokens have other ids"):
        check_same_vocabulary(target, draft, 4, 4)
    (draft / "tokenizer.json").unlink()
    with pytest.raises(UnsupportedModelError, match="has no tokenizer.json"):
        check_same_vocabulary(target, draft, 4, 4)
