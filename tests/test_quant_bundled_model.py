"""Quantizing the bundled SmolLM2-135M-Instruct on CPU: bitsandbytes int8 / nf4, FP8 and the
weight-only int8 / int4 (`--quantize int8 / int4`).

The measure is the mean per-token log-likelihood of a fixed reference text (teacher-forced,
through the paged KV cache), computed here for the unquantized bfloat16 model and for each
quantized one. Stated bounds (nats per token; unquantized is about -2.0 on this text, a uniform
guess -10.8):
- bitsandbytes int8 (LLM.int8):   within INT8_TOLERANCE
- bitsandbytes nf4 (4-bit):       within NF4_TOLERANCE (4 bits cost a 135M model more)
- FP8 weights + FP8 KV cache:     within FP8_TOLERANCE
- int8 (weight-only, per channel): within INT8_TOLERANCE, as the other 8-bit schemes
- int4 (weight-only, groups of 32): within NF4_TOLERANCE, as nf4 (measured much closer: the
  bundled GGUF is Q4_1, blocks of 32 on a 16-level grid, which int4's groups reproduce)
Greedy agreement (FP8, int8, int4): the greedy next token after each of PROMPTS is the
unquantized one for at least MIN_SAME_NEXT_TOKENS of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from ferrite_server.config import ShardConfig
from ferrite_server.engine.model_runner import ModelRunner
from tests.support.quant_eval import mean_log_likelihood, prompt_logits

REFERENCE_TEXT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It "
    "is named after the engineer Gustave Eiffel, whose company designed and built the tower from "
    "1887 to 1889. Locally nicknamed the Iron Lady, it was constructed as the centerpiece of the "
    "1889 World's Fair."
)
PROMPTS = (
    "The capital of France is",
    "Water boils at a temperature of",
    "The largest planet in the solar system is",
    "def fibonacci(n):",
    "Once upon a time, there was a",
    "The three primary colors are",
    "The chemical symbol for gold is",
    "Monday, Tuesday, Wednesday,",
)
INT8_TOLERANCE = 0.15
NF4_TOLERANCE = 0.5
FP8_TOLERANCE = 0.15
MIN_SAME_NEXT_TOKENS = 6  # of 8


@pytest.fixture(scope="module")
def bundled_config(default_model_dir: Path) -> ShardConfig:
    return ShardConfig(
        model_id=default_model_dir,
        uds_path=default_model_dir / "unused.sock",
        dtype="bfloat16",
        kv_cache_memory_bytes=16 << 20,
    )


@pytest.fixture(scope="module")
def token_ids(default_model_dir: Path) -> dict[str, list[int]]:
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    texts = {"reference": REFERENCE_TEXT, **{prompt: prompt for prompt in PROMPTS}}
    return {key: tokenizer(text)["input_ids"] for key, text in texts.items()}


def _log_likelihoods(
    runner: ModelRunner, unquantized: ModelRunner, token_ids: dict[str, list[int]]
) -> tuple[float, float]:
    """(quantized, unquantized) mean log-likelihood of the reference text."""
    reference = token_ids["reference"]
    return mean_log_likelihood(runner, reference), mean_log_likelihood(unquantized, reference)


def _num_same_next_tokens(
    runner: ModelRunner, unquantized: ModelRunner, token_ids: dict[str, list[int]]
) -> int:
    """How many PROMPTS get the same greedy next token from both models."""
    return sum(
        prompt_logits(runner, token_ids[prompt])[-1].argmax().item()
        == prompt_logits(unquantized, token_ids[prompt])[-1].argmax().item()
        for prompt in PROMPTS
    )


@pytest.fixture(scope="module")
def unquantized(bundled_config: ShardConfig) -> Iterator[ModelRunner]:
    yield ModelRunner.load(bundled_config)


@pytest.mark.parametrize(
    ("quantize", "tolerance"),
    [("bitsandbytes", INT8_TOLERANCE), ("bitsandbytes-nf4", NF4_TOLERANCE)],
)
def test_bitsandbytes_log_likelihood_stays_close(
    bundled_config: ShardConfig,
    unquantized: ModelRunner,
    token_ids: dict[str, list[int]],
    quantize: str,
    tolerance: float,
) -> None:
    runner = ModelRunner.load(replace(bundled_config, quantize=quantize))  # type: ignore[arg-type]
    assert runner.facts.quantization == quantize
    assert runner.facts.model_memory_bytes < 0.7 * unquantized.facts.model_memory_bytes
    got, expected = _log_likelihoods(runner, unquantized, token_ids)
    assert abs(got - expected) < tolerance, (got, expected)


def test_fp8_weights_and_kv_keep_log_likelihood_and_greedy_tokens(
    bundled_config: ShardConfig, unquantized: ModelRunner, token_ids: dict[str, list[int]]
) -> None:
    runner = ModelRunner.load(replace(bundled_config, quantize="fp8", kv_cache_dtype="fp8"))
    got, expected = _log_likelihoods(runner, unquantized, token_ids)
    assert abs(got - expected) < FP8_TOLERANCE, (got, expected)
    same = _num_same_next_tokens(runner, unquantized, token_ids)
    assert same >= MIN_SAME_NEXT_TOKENS, same


@pytest.mark.parametrize(("quantize", "tolerance"), [("int8", INT8_TOLERANCE), ("int4", NF4_TOLERANCE)])
def test_weight_only_int8_int4_keep_log_likelihood_and_greedy_tokens(
    bundled_config: ShardConfig,
    unquantized: ModelRunner,
    token_ids: dict[str, list[int]],
    quantize: str,
    tolerance: float,
) -> None:
    runner = ModelRunner.load(replace(bundled_config, quantize=quantize))  # type: ignore[arg-type]
    assert runner.facts.quantization == quantize
    assert runner.facts.model_memory_bytes < 0.75 * unquantized.facts.model_memory_bytes
    got, expected = _log_likelihoods(runner, unquantized, token_ids)
    assert abs(got - expected) < tolerance, (got, expected)
    same = _num_same_next_tokens(runner, unquantized, token_ids)
    assert same >= MIN_SAME_NEXT_TOKENS, same
