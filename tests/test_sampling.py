"""Sampling: masks against hand-computed and Hugging Face references, penalties against their
formulas, greedy / logprobs, seeded reproducibility, and the sampled distribution."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from ferrite_server.engine.sampling import SequenceSamplingState, sample, stream_uniform
from ferrite_server.engine.sampling.batch_params import build_warp_params
from ferrite_server.engine.sampling.filters import (
    min_p_mask,
    top_k_mask,
    top_p_mask,
    typical_mask,
)
from ferrite_server.engine.sampling.sampler import warp_scores
from ferrite_server.engine.types import SamplingParams

# Sampling runs on the logits' device: every device this machine has is checked.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
VOCAB_SIZE = 64
# probabilities 0.5, 0.3, 0.15, 0.05 as logits
SMALL_PROBS = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
SMALL_LOGITS = SMALL_PROBS.log()


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


def _state(
    params: SamplingParams = SamplingParams(),
    generated: tuple[int, ...] = (),
    prompt: tuple[int, ...] = (1, 2, 3),
    seed: int = 0,
) -> SequenceSamplingState:
    return SequenceSamplingState(params=params, prompt_ids=prompt, generated_ids=generated, seed=seed)


def _kept(mask: torch.Tensor) -> set[int]:
    return set(torch.nonzero(~mask[0]).flatten().tolist())


# -- masks against hand-computed small distributions ------------------------------------------


def test_top_k_keeps_k_largest_and_ties() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    assert _kept(top_k_mask(logits, torch.tensor([2]), max_k=2)) == {0, 2}
    tied = torch.tensor([[3.0, 2.0, 2.0, 0.0]])
    assert _kept(top_k_mask(tied, torch.tensor([2]), max_k=2)) == {0, 1, 2}
    # a row without top-k (k == V) beside a row with it keeps everything
    both = torch.cat([logits, logits])
    mask = top_k_mask(both, torch.tensor([1, 4]), max_k=1)
    assert _kept(mask[:1]) == {0} and _kept(mask[1:]) == {0, 1, 2, 3}


@pytest.mark.parametrize(("top_p", "expected"), [(0.45, {0}), (0.75, {0, 1}), (0.85, {0, 1, 2}), (1.0, {0, 1, 2, 3})])
def test_top_p_keeps_smallest_set_reaching_mass(top_p: float, expected: set[int]) -> None:
    assert _kept(top_p_mask(SMALL_LOGITS, torch.tensor([top_p]))) == expected


def test_top_p_on_a_large_vocab_matches_hugging_face_per_row(device: torch.device) -> None:
    """Peaked rows are decided among the top candidates, a flat row needs the full sort, and
    a row without top_p keeps everything; each row agrees with HF's TopPLogitsWarper."""
    torch.manual_seed(5)
    vocab_size = 3000
    scales = torch.tensor([[6.0], [0.05], [6.0], [3.0]], device=device)
    scores = torch.randn(4, vocab_size, device=device) * scales
    top_p = [0.9, 0.9, 1.0, 0.5]
    mask = top_p_mask(scores, torch.tensor(top_p, device=device))
    for row, p in enumerate(top_p):
        expected = scores[row : row + 1].clone()
        if p < 1.0:
            expected = TopPLogitsWarper(p)(torch.zeros(1, 1, dtype=torch.long), expected)
        assert torch.equal(mask[row], expected[0].isinf()), row
    assert int((~mask[1]).sum()) > 1024  # the flat row really kept more than the candidates


@pytest.mark.parametrize(("min_p", "expected"), [(0.0, {0, 1, 2, 3}), (0.2, {0, 1, 2}), (0.5, {0, 1}), (0.9, {0})])
def test_min_p_drops_below_fraction_of_top(min_p: float, expected: set[int]) -> None:
    assert _kept(min_p_mask(SMALL_LOGITS, torch.tensor([min_p]))) == expected


def _typical_reference(probs: list[float], mass: float) -> set[int]:
    """Direct formula: sort tokens by |surprisal - entropy|, keep until `mass` is covered."""
    entropy = -sum(p * math.log(p) for p in probs)
    order = sorted(range(len(probs)), key=lambda i: abs(-math.log(probs[i]) - entropy))
    kept, covered = set(), 0.0
    for token in order:
        kept.add(token)
        covered += probs[token]
        if covered >= mass:
            break
    return kept


@pytest.mark.parametrize("mass", [0.2, 0.7, 0.9, 0.97])
def test_typical_keeps_tokens_closest_to_entropy(mass: float) -> None:
    expected = _typical_reference(SMALL_PROBS[0].tolist(), mass)
    assert _kept(typical_mask(SMALL_LOGITS, torch.tensor([mass]))) == expected


# -- the whole warper chain against Hugging Face's ---------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(do_sample=True, temperature=0.7, top_k=10),
        SamplingParams(do_sample=True, top_p=0.8),
        SamplingParams(do_sample=True, temperature=1.3, min_p=0.1),
        SamplingParams(do_sample=True, typical_p=0.6),
        SamplingParams(do_sample=True, temperature=0.9, top_k=20, top_p=0.9, min_p=0.05, typical_p=0.9),
    ],
)
def test_warp_chain_matches_hugging_face(params: SamplingParams, device: torch.device) -> None:
    torch.manual_seed(0)
    scores = torch.randn(4, VOCAB_SIZE, device=device) * 3
    hf_chain = LogitsProcessorList()
    if params.temperature != 1.0:
        hf_chain.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k:
        hf_chain.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1.0:
        hf_chain.append(TopPLogitsWarper(params.top_p))
    if params.min_p:
        hf_chain.append(MinPLogitsWarper(params.min_p))
    if params.typical_p < 1.0:
        hf_chain.append(TypicalLogitsWarper(params.typical_p))
    expected = hf_chain(torch.zeros(4, 1, dtype=torch.long, device=device), scores.clone())
    warp = build_warp_params([params] * 4, VOCAB_SIZE, scores.device)
    actual = warp_scores(scores, warp)
    assert torch.equal(actual.isinf(), expected.isinf())
    torch.testing.assert_close(actual[~actual.isinf()], expected[~expected.isinf()])


# -- penalties and logit bias against their formulas --------------------------------------------


def test_repetition_penalty_matches_formula_and_hugging_face(device: torch.device) -> None:
    torch.manual_seed(1)
    logits = torch.randn(1, VOCAB_SIZE, device=device)
    prompt, generated, penalty = (3, 5, 5, 9), (9, 11), 1.5
    seq = _state(SamplingParams(repetition_penalty=penalty), generated, prompt)
    chosen = sample(logits, [seq], num_top_tokens=0).token_ids[0]
    expected = logits.clone()
    for token in set(prompt + generated):
        value = expected[0, token]
        expected[0, token] = value / penalty if value > 0 else value * penalty
    assert chosen == int(expected.argmax())
    hf = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([prompt + generated], device=device), logits.clone())
    torch.testing.assert_close(hf, expected)


def test_frequency_presence_penalties_and_bias_match_formula(device: torch.device) -> None:
    logits = torch.zeros(1, VOCAB_SIZE, device=device)
    logits[0, :4] = torch.tensor([3.0, 2.9, 2.5, 2.0], device=device)
    generated = (0, 0, 1)  # token 0 twice, token 1 once; prompt tokens are not penalized
    params = SamplingParams(frequency_penalty=0.4, presence_penalty=0.3)
    # 0: 3.0 - 0.8 - 0.3 = 1.9; 1: 2.9 - 0.4 - 0.3 = 2.2; 2: 2.5 -> argmax 2
    assert sample(logits, [_state(params, generated, prompt=(2, 2, 2))], 0).token_ids == [2]
    biased = SamplingParams(frequency_penalty=0.4, presence_penalty=0.3, logit_bias=((3, 0.6),))
    # 3: 2.0 + 0.6 = 2.6 > 2.5
    assert sample(logits, [_state(biased, generated, prompt=(2, 2, 2))], 0).token_ids == [3]


# -- greedy, logprobs, top tokens ------------------------------------------------------------


def test_greedy_is_argmax_and_logprobs_are_raw_log_softmax(device: torch.device) -> None:
    torch.manual_seed(2)
    logits = torch.randn(5, VOCAB_SIZE, device=device) * 4
    seqs = [
        _state(),
        _state(SamplingParams(temperature=0.1, top_k=3)),  # ignored without do_sample
        _state(SamplingParams(do_sample=True, temperature=0.5, top_p=0.5), seed=4),
        _state(SamplingParams(repetition_penalty=1.0, frequency_penalty=0.0)),
        _state(SamplingParams(do_sample=True, top_k=2), seed=5),
    ]
    result = sample(logits, seqs, num_top_tokens=3)
    log_probs = logits.log_softmax(dim=-1)
    argmax = logits.argmax(dim=-1).tolist()
    assert [result.token_ids[row] for row in (0, 1, 3)] == [argmax[row] for row in (0, 1, 3)]
    for row, token_id in enumerate(result.token_ids):
        assert result.logprobs[row] == pytest.approx(float(log_probs[row, token_id]), abs=1e-6)
        top_values, top_ids = log_probs[row].topk(3)
        assert [token for token, _ in result.top_tokens[row]] == top_ids.tolist()
        assert [lp for _, lp in result.top_tokens[row]] == pytest.approx(top_values.tolist(), abs=1e-6)
    assert result.token_ids[4] in log_probs[4].topk(2).indices.tolist()


# -- seeded reproducibility --------------------------------------------------------------------


def _generate(
    logits_by_step: list[torch.Tensor], seq: SequenceSamplingState, others: list[SequenceSamplingState], row: int
) -> list[int]:
    """Feed one request step by step, placed at `row` among `others` (which stay fixed)."""
    tokens: list[int] = []
    for step_logits in logits_by_step:
        current = SequenceSamplingState(seq.params, seq.prompt_ids, tuple(tokens), seq.seed)
        batch = others[:row] + [current] + others[row:]
        noise_rows = torch.randn(len(batch), VOCAB_SIZE, device=step_logits.device)
        noise_rows[row] = step_logits
        tokens.append(sample(noise_rows, batch, num_top_tokens=1).token_ids[row])
    return tokens


def test_same_seed_same_tokens_whatever_else_is_in_the_batch(device: torch.device) -> None:
    torch.manual_seed(3)
    logits_by_step = [torch.randn(VOCAB_SIZE, device=device) for _ in range(12)]
    params = SamplingParams(do_sample=True, temperature=1.2, top_p=0.95, repetition_penalty=1.1)
    seq = _state(params, seed=1234)
    others = [
        _state(SamplingParams(do_sample=True, top_k=5), seed=1234),  # same seed, other params
        _state(),
        _state(SamplingParams(do_sample=True, typical_p=0.5, frequency_penalty=1.0), (7, 7), seed=9),
        _state(SamplingParams(do_sample=True, min_p=0.2), seed=1),
    ]
    alone = _generate(logits_by_step, seq, [], 0)
    assert _generate(logits_by_step, seq, others, 0) == alone
    assert _generate(logits_by_step, seq, others, 2) == alone
    assert _generate(logits_by_step, seq, others[1:2], 1) == alone
    other_seed = _state(params, seed=4321)
    assert _generate(logits_by_step, other_seed, [], 0) != alone


def test_resumed_request_continues_its_stream() -> None:
    """After a preemption the shard sees the same (seed, generated count): same next token."""
    torch.manual_seed(4)
    logits = torch.randn(1, VOCAB_SIZE)
    params = SamplingParams(do_sample=True)
    first = sample(logits, [_state(params, generated=(5, 6, 7), seed=77)], 0)
    resumed = sample(logits, [_state(params, generated=(5, 6, 7), seed=77, prompt=(1, 2, 3, 5, 6, 7))], 0)
    assert first.token_ids == resumed.token_ids
    assert stream_uniform(77, 3) != stream_uniform(77, 4) != stream_uniform(78, 3)


# -- the sampled distribution ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected_probs"),
    [
        (SamplingParams(do_sample=True), [0.5, 0.3, 0.15, 0.05]),
        (SamplingParams(do_sample=True, top_k=2), [0.625, 0.375, 0.0, 0.0]),
    ],
)
def test_sampled_frequencies_follow_probabilities(
    params: SamplingParams, expected_probs: list[float], device: torch.device
) -> None:
    num_draws = 4000
    logits = SMALL_LOGITS.to(device).expand(num_draws, -1).contiguous()
    seqs = [_state(params, seed=seed) for seed in range(num_draws)]
    counts = torch.bincount(torch.tensor(sample(logits, seqs, 0).token_ids), minlength=4)
    frequencies = (counts.float() / num_draws).tolist()
    # 4000 draws: the standard error of a frequency is at most 0.008; allow ~4 of them.
    assert frequencies == pytest.approx(expected_probs, abs=0.035)


def test_one_request_stream_over_many_steps_follows_probabilities() -> None:
    """The draws of one seed along its steps are as uniform as draws across seeds."""
    num_steps = 4000
    uniforms = torch.tensor([stream_uniform(12345, step) for step in range(num_steps)])
    assert float(uniforms.min()) >= 0.0 and float(uniforms.max()) < 1.0
    histogram = torch.histc(uniforms, bins=10, min=0.0, max=1.0) / num_steps
    assert histogram.tolist() == pytest.approx([0.1] * 10, abs=0.03)


def test_mismatched_batch_is_refused() -> None:
    with pytest.raises(ValueError):
        sample(torch.zeros(2, VOCAB_SIZE), [_state()], 0)
