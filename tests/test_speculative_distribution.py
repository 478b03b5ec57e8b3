"""Sampled speculative output follows the target model's distribution (issue 18, "Must show"),
on the engine with a tiny Llama: many seeded requests with one prompt, and the frequencies of
the tokens that speculative steps produce (generated tokens 2-4; the first comes from the
prefill) match those of non-speculative sampling within a chi-square bound.

- n-gram proposals are one-hot guesses kept when the seeded sample equals them: the tokens are
  the very same as without speculation, seed for seed.
- a draft model goes through the rejection rule: other tokens than without speculation for a
  given seed, the same distribution. Two drafts: the target cut to its first layer (q near p,
  many proposals accepted) and an unrelated random tiny Llama (q far from p). With the first,
  the same check fails for a deliberately biased rule (resampling from p rather than
  max(p - q, 0) after a rejection), so it has the power to catch a wrong rule.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ferrite_server.engine.sampling.random_stream import draw_from_scores
from ferrite_server.engine.speculative import rejection
from ferrite_server.engine.types import RequestParams, SamplingParams, StoppingParams
from tests.support.chi_square import homogeneity, passes
from tests.support.draft_models import write_truncated_model
from tests.support.engine_driver import BlockAllocator, EngineDriver, ScriptedRequest
from tests.support.engines import warmed_up_engine
from tests.support.tiny_models import TinyModelSpec, write_tiny_model

NUM_SAMPLES = 1500
NUM_LOOKAHEAD_TOKENS = 3
MAX_NEW_TOKENS = 1 + NUM_LOOKAHEAD_TOKENS
PROMPT = [12, 40, 41, 42, 43, 12, 40, 41]
# Peaked enough that a few thousand samples cover each position's likely tokens.
SAMPLING = dict(do_sample=True, temperature=0.7, top_k=8)
DRAFT_SEED_OFFSET = 1_000_000  # the draft run's seeds: an independent sample


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("distribution")
    target = write_tiny_model(root / "target", TinyModelSpec(seed=11))
    return {
        "target": target,
        "first_layer": write_truncated_model(target, root / "first-layer", num_layers=1),
        "unrelated": write_tiny_model(root / "unrelated", TinyModelSpec(seed=23)),
    }


def _generate(model_dir: Path, first_seed: int, **speculation: object) -> list[list[int]]:
    engine, num_blocks = warmed_up_engine(model_dir, **speculation)
    params = [
        RequestParams(
            sampling=SamplingParams(**SAMPLING, seed=first_seed + index),
            stopping=StoppingParams(max_new_tokens=MAX_NEW_TOKENS, ignore_eos=True),
        )
        for index in range(NUM_SAMPLES)
    ]
    requests = [
        ScriptedRequest(request_id=index + 1, prompt_ids=PROMPT, params=param)
        for index, param in enumerate(params)
    ]
    lookahead = NUM_LOOKAHEAD_TOKENS if speculation else 0
    EngineDriver(engine, BlockAllocator(num_blocks), num_lookahead_tokens=lookahead).run(requests)
    if speculation:
        assert any(count > 1 for r in requests for count in r.tokens_per_step), "no run accepted"
    return [request.generated_ids for request in requests]


@pytest.fixture(scope="module")
def plain(models: dict[str, Path]) -> list[list[int]]:
    return _generate(models["target"], first_seed=0)


def _all_positions_match(first: list[list[int]], second: list[list[int]]) -> bool:
    return all(
        passes(homogeneity([tokens[index] for tokens in first], [tokens[index] for tokens in second]))
        for index in range(1, MAX_NEW_TOKENS)
    )


def test_ngram_sampling_gives_the_same_tokens_seed_for_seed(models, plain) -> None:
    speculative = _generate(models["target"], first_seed=0, speculative_method="ngram")
    assert speculative == plain
    assert _all_positions_match(plain, speculative)


@pytest.mark.parametrize("draft", ["first_layer", "unrelated"])
def test_draft_sampling_follows_the_target_distribution(models, plain, draft: str) -> None:
    speculative = _generate(
        models["target"], DRAFT_SEED_OFFSET, speculative_method="draft",
        draft_model_id=models[draft],
    )
    assert _all_positions_match(plain, speculative)
    assert speculative != _generate(models["target"], DRAFT_SEED_OFFSET)  # not the same tokens


def _resample_from_target(target_probs, draft_probs, proposed_ids, seeds, steps):
    """The wrong rule: after a rejection, draw from p instead of max(p - q, 0)."""
    accepted, _ = _correct_rule(target_probs, draft_probs, proposed_ids, seeds, steps)
    residual_seeds = [rejection.stream_seed(seed, rejection.RESIDUAL_STREAM_SALT) for seed in seeds]
    return accepted, draw_from_scores(torch.log(target_probs), residual_seeds, steps)


_correct_rule = rejection.accept_and_resample


def test_a_biased_rule_fails_the_check(models, plain, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rejection, "accept_and_resample", _resample_from_target)
    biased = _generate(
        models["target"], DRAFT_SEED_OFFSET, speculative_method="draft",
        draft_model_id=models["first_layer"],
    )
    assert not _all_positions_match(plain, biased)
