"""Speculative decoding (n-gram proposals) on the engine, driven as the router drives it: with
lookahead slots reserved, a request's tokens are exactly those of the same request without
speculation (greedy, and seeded sampling with penalties), while some steps produce several
tokens; max_new_tokens ends an accepted run at the right token.

Tiny random-weight Llama. Its greedy output falls into loops quickly, which is what n-gram
lookup predicts, so proposals are accepted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ferrite_server.engine.speculative.ngram import propose_ngram
from ferrite_server.engine.speculative.verify import accepted_run
from ferrite_server.engine.types import (
    FinishReason,
    GeneratedToken,
    RequestParams,
    SamplingParams,
    StoppingParams,
)
from tests.support.engine_driver import BlockAllocator, EngineDriver, ScriptedRequest
from tests.support.engines import warmed_up_engine
from tests.support.tiny_models import TinyModelSpec, write_tiny_model

NUM_LOOKAHEAD_TOKENS = 3
LOGPROB_TOLERANCE = 1e-4  # float32: a row of a multi-token forward vs a one-token decode
PROMPTS = [
    [12, 40, 41, 42, 43, 12, 40, 41],
    [100, 101, 102, 100, 101, 102, 100],
    [7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 7, 8],
    [250, 3, 250, 3, 250],
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", TinyModelSpec(seed=11))


def _params(max_new_tokens: int, **sampling: float) -> RequestParams:
    return RequestParams(
        sampling=SamplingParams(**sampling),
        stopping=StoppingParams(max_new_tokens=max_new_tokens, ignore_eos=True),
        top_n_tokens=2,
    )


def _run(model_dir: Path, params: list[RequestParams], speculate: bool) -> list[ScriptedRequest]:
    engine, num_blocks = warmed_up_engine(model_dir, speculative_method="ngram" if speculate else None)
    requests = [
        ScriptedRequest(request_id=index + 1, prompt_ids=prompt, params=param, join_step=index % 2)
        for index, (prompt, param) in enumerate(zip(PROMPTS, params, strict=True))
    ]
    lookahead = NUM_LOOKAHEAD_TOKENS if speculate else 0
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


def test_greedy_speculation_gives_the_same_tokens_in_fewer_steps(model_dir: Path) -> None:
    params = [_params(24) for _ in PROMPTS]
    reference = _run(model_dir, params, speculate=False)
    speculative = _run(model_dir, params, speculate=True)
    _assert_same_tokens(reference, speculative)
    assert all(count == 1 for request in reference for count in request.tokens_per_step)
    assert _num_multi_token_steps(speculative) > 0, "no proposal was ever accepted"
    assert max(count for r in speculative for count in r.tokens_per_step) <= 1 + NUM_LOOKAHEAD_TOKENS


def test_seeded_sampling_with_penalties_gives_the_same_tokens(model_dir: Path) -> None:
    # A low temperature keeps the sampled text loopy enough for proposals to be accepted.
    params = [
        _params(20, do_sample=True, temperature=0.3, seed=5),
        _params(20, do_sample=True, temperature=0.5, top_k=20, seed=6, repetition_penalty=1.1),
        _params(20),  # greedy beside sampled rows
        _params(20, do_sample=True, temperature=0.4, top_p=0.9, seed=7, frequency_penalty=0.2),
    ]
    reference = _run(model_dir, params, speculate=False)
    speculative = _run(model_dir, params, speculate=True)
    _assert_same_tokens(reference, speculative)
    assert _num_multi_token_steps(speculative) > 0


def test_max_new_tokens_ends_an_accepted_run_exactly(model_dir: Path) -> None:
    for max_new_tokens in (2, 5, 9):
        params = [_params(max_new_tokens) for _ in PROMPTS]
        reference = _run(model_dir, params, speculate=False)
        speculative = _run(model_dir, params, speculate=True)
        _assert_same_tokens(reference, speculative)
        assert all(len(request.tokens) == max_new_tokens for request in speculative)


def test_ngram_proposals_follow_the_latest_longest_match() -> None:
    assert propose_ngram([1, 2, 3, 9, 1, 2, 3, 4, 5, 1, 2, 3], 2) == (4, 5)  # latest of "1 2 3"
    assert propose_ngram([5, 6, 7, 8, 6, 7], 3) == (8, 6, 7)  # "6 7" matched, then what followed
    assert propose_ngram([4, 4, 4, 4], 3) == (4,)  # overlapping match: one token follows it
    assert propose_ngram([1, 2, 3], 3) == ()  # nothing repeats
    assert propose_ngram([1, 2, 1], 0) == ()


def _token(token_id: int) -> GeneratedToken:
    return GeneratedToken(token_id=token_id, logprob=-1.0)


def test_verification_keeps_proposals_up_to_the_first_disagreement() -> None:
    choices = [_token(7), _token(8), _token(3), _token(4)]
    assert [t.token_id for t in accepted_run(choices, [7, 8, 9])] == [7, 8, 3]
    assert [t.token_id for t in accepted_run(choices, [7, 8, 3])] == [7, 8, 3, 4]  # + bonus
    assert [t.token_id for t in accepted_run(choices, [1, 8, 3])] == [7]
    assert [t.token_id for t in accepted_run(choices[:1], [])] == [7]
    with pytest.raises(ValueError):
        accepted_run(choices, [7])
