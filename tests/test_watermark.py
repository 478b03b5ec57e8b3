"""The greenlist watermark in the sampler (mixed batches, the bias itself, raw logprobs) and its
detector (z-score of watermarked against unwatermarked token streams)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ferrite_server.config import WatermarkConfig
from ferrite_server.engine.sampling import SequenceSamplingState, sample
from ferrite_server.engine.sampling.watermark import Watermark, greenlist_ids, greenlist_size
from ferrite_server.engine.types import SamplingParams
from ferrite_server.proto import shard_pb2 as pb
from ferrite_server.proto_convert import sampling_from_proto
from ferrite_server.watermark_detect import detect_text, score_tokens

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
VOCAB_SIZE = 1000


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


def _state(params: SamplingParams, generated: tuple[int, ...] = (), seed: int = 0,
           prompt: tuple[int, ...] = (7,)) -> SequenceSamplingState:
    return SequenceSamplingState(params=params, prompt_ids=prompt, generated_ids=generated, seed=seed)


def test_greenlists_are_deterministic_sized_by_gamma_and_keyed_on_the_previous_token() -> None:
    first = greenlist_ids(5, VOCAB_SIZE, 0.25)
    assert len(first) == greenlist_size(VOCAB_SIZE, 0.25) == 250
    assert torch.equal(first, greenlist_ids(5, VOCAB_SIZE, 0.25))
    assert len(set(first.tolist())) == 250
    other = set(greenlist_ids(6, VOCAB_SIZE, 0.25).tolist())
    overlap = len(other & set(first.tolist()))
    assert overlap < 150  # two independent quarter-lists share ~62 tokens, never most of them


def test_config_refuses_gamma_outside_the_unit_interval() -> None:
    with pytest.raises(ValueError, match="gamma"):
        WatermarkConfig(gamma=1.0)
    with pytest.raises(ValueError, match="delta"):
        WatermarkConfig(delta=-1.0)


def test_greedy_watermarked_row_takes_the_argmax_of_the_biased_logits(device: torch.device) -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, VOCAB_SIZE, device=device)
    config = WatermarkConfig(gamma=0.5, delta=3.0)
    seq = _state(SamplingParams(watermark=True), generated=(42,))
    chosen = sample(logits, [seq], 2, Watermark(config)).token_ids[0]
    biased = logits[0].cpu().clone()
    biased[greenlist_ids(42, VOCAB_SIZE, 0.5)] += 3.0
    assert chosen == int(biased.argmax())
    assert chosen in set(greenlist_ids(42, VOCAB_SIZE, 0.5).tolist())


def test_mixed_batch_leaves_other_rows_alone_and_reports_raw_logprobs(device: torch.device) -> None:
    torch.manual_seed(1)
    logits = torch.randn(4, VOCAB_SIZE, device=device) * 2
    plain = [
        _state(SamplingParams(do_sample=True, temperature=0.9), generated=(3,), seed=11),
        _state(SamplingParams(), generated=(4,)),
    ]
    marked = [
        _state(SamplingParams(do_sample=True, watermark=True), generated=(5,), seed=12),
        _state(SamplingParams(watermark=True), generated=(6,)),
    ]
    watermark = Watermark(WatermarkConfig(gamma=0.5, delta=50.0))
    mixed = sample(logits, [plain[0], marked[0], plain[1], marked[1]], 1, watermark)
    alone = sample(logits[[0, 2]], plain, 1, watermark)
    assert [mixed.token_ids[0], mixed.token_ids[2]] == alone.token_ids
    # delta 50 forces the greenlist: both watermarked rows pick green tokens.
    for row, previous in ((1, 5), (3, 6)):
        assert mixed.token_ids[row] in set(greenlist_ids(previous, VOCAB_SIZE, 0.5).tolist())
    log_probs = logits.log_softmax(dim=-1)
    for row, token_id in enumerate(mixed.token_ids):
        assert mixed.logprobs[row] == pytest.approx(float(log_probs[row, token_id]), abs=1e-5)


def test_first_token_is_keyed_on_the_last_prompt_token(device: torch.device) -> None:
    logits = torch.zeros(1, VOCAB_SIZE, device=device)
    seq = _state(SamplingParams(watermark=True), prompt=(1, 2, 99))
    chosen = sample(logits, [seq], 0, Watermark(WatermarkConfig(delta=5.0))).token_ids[0]
    assert chosen in set(greenlist_ids(99, VOCAB_SIZE, 0.5).tolist())


def _sampled_stream(watermarked: bool, steps: int, seed: int) -> list[int]:
    """Tokens drawn step by step from fresh random logits (a high-entropy 'model')."""
    generator = torch.Generator().manual_seed(seed)
    watermark = Watermark(WatermarkConfig(gamma=0.5, delta=2.0))
    params = SamplingParams(do_sample=True, watermark=watermarked)
    tokens: list[int] = [3]
    for _ in range(steps):
        logits = torch.randn(1, VOCAB_SIZE, generator=generator)
        state = _state(params, generated=tuple(tokens[1:]), prompt=(3,), seed=seed)
        tokens.append(sample(logits, [state], 0, watermark).token_ids[0])
    return tokens


def test_detector_finds_the_watermark_and_not_its_absence() -> None:
    marked = score_tokens(_sampled_stream(True, 120, seed=5), VOCAB_SIZE, 0.5)
    plain = score_tokens(_sampled_stream(False, 120, seed=5), VOCAB_SIZE, 0.5)
    assert marked.num_tokens_scored == plain.num_tokens_scored == 120
    assert marked.watermarked and marked.z_score > 4.0, marked
    assert not plain.watermarked and abs(plain.z_score) < 4.0, plain
    assert marked.p_value < 1e-4 < plain.p_value


def test_short_texts_score_nothing() -> None:
    empty = score_tokens([5], VOCAB_SIZE, 0.5)
    assert (empty.num_tokens_scored, empty.z_score, empty.watermarked) == (0, 0.0, False)


def test_proto_flag_reaches_the_sampling_params() -> None:
    assert sampling_from_proto(pb.SamplingParameters(watermark=True)).watermark
    assert not sampling_from_proto(pb.SamplingParameters()).watermark


def test_detect_text_tokenizes_with_the_model_directory(default_model_dir) -> None:
    # Prose a person wrote carries no watermark.
    text = ("The quick brown fox jumps over the lazy dog while the farmer watches from the porch "
            "and wonders whether the rain will hold off until the harvest is in.")
    detection = detect_text(text, default_model_dir, gamma=0.5)
    assert detection.num_tokens_scored > 20
    assert not detection.watermarked


def test_the_detector_command_prints_one_json_line(default_model_dir, tmp_path) -> None:
    text_file = tmp_path / "answer.txt"
    text_file.write_text("Paris is the capital and the largest city of France, on the Seine.")
    server_dir = Path(__file__).resolve().parents[1] / "server"
    command = [sys.executable, "-m", "ferrite_server.watermark_detect", "--model-dir",
               str(default_model_dir), "--gamma", "0.25", str(text_file)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(server_dir), "PATH": ""})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"num_tokens_scored", "num_green_tokens", "green_fraction", "z_score",
                           "p_value", "watermarked"}
    assert report["num_tokens_scored"] > 5 and report["watermarked"] is False
    refused = subprocess.run([*command[:-3], "--gamma", "1.5", "--text", "x"], capture_output=True,
                             text=True, timeout=120, env={"PYTHONPATH": str(server_dir), "PATH": ""})
    assert refused.returncode == 2 and "--gamma must be in (0, 1)" in refused.stderr
