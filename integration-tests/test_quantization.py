"""Quantization through the real launcher (issue 9, "Must show"): the bundled model quantized
on the fly with bitsandbytes answers the France question, and so does it with the weight-only
int8 / int4 (issue 22; int4 is what the bundled Q4_1 GGUF gets without flags on CPU); a GPTQ
checkpoint is detected without a flag and generates what transformers generates from its
dequantized weights; a GPTQ checkpoint with --quantize fp8 is refused by the shard, and the
launcher says why."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import requests

from support.launcher import running_ferrite
from test_launcher import hf_greedy_ids, info, run_launcher, served_greedy_ids
from tests.support.quantized_checkpoints import write_packed_checkpoints

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def greedy_answer(base_url: str) -> str:
    """The server's greedy chat answer to QUESTION (20 tokens at most)."""
    answer = requests.post(
        f"{base_url}/v1/chat/completions",
        json={"model": "any", "messages": QUESTION, "max_tokens": 20, "temperature": 0},
        timeout=300,
    )
    answer.raise_for_status()
    return answer.json()["choices"][0]["message"]["content"]
GPTQ_GROUP_SIZE = 16
PROMPT = "Hello, quantized ferrite!"
MAX_NEW_TOKENS = 8


@pytest.mark.parametrize(
    ("quantize", "kv_cache_dtype"), [("bitsandbytes", "auto"), ("bitsandbytes-nf4", "fp8")]
)
def test_bitsandbytes_bundled_model_answers_paris(quantize: str, kv_cache_dtype: str) -> None:
    args = ["--quantize", quantize, "--kv-cache-dtype", kv_cache_dtype, "--max-total-tokens", "512"]
    with running_ferrite(args) as server:
        content = greedy_answer(server.base_url)
        assert "Paris" in content, content
        facts = info(server)
        assert facts["quantize"] == quantize
        assert facts["kv_cache_dtype"] == kv_cache_dtype
        assert f"quantization: {quantize}" in server.log()  # weight memory logged at load


@pytest.mark.parametrize(
    ("flags", "expected"), [(["--quantize", "int8"], "int8"), ([], "int4")], ids=["int8", "default"]
)
def test_weight_only_bundled_model_answers_paris(flags: list[str], expected: str) -> None:
    with running_ferrite([*flags, "--max-total-tokens", "512"]) as server:
        content = greedy_answer(server.base_url)
        assert "Paris" in content, content
        assert info(server)["quantize"] == expected
        assert f"quantization: {expected}" in server.log()


@pytest.fixture(scope="module")
def gptq_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(GPTQ checkpoint, float checkpoint of its dequantized weights), both with the tokenizer."""
    written = write_packed_checkpoints(
        tiny_model_dir, tmp_path_factory.mktemp("gptq"), "gptq", GPTQ_GROUP_SIZE
    )
    for path in tiny_model_dir.iterdir():
        if "token" in path.name:
            for target in (written.quantized_dir, written.float_dir):
                shutil.copy(path, target / path.name)
    return written.quantized_dir, written.float_dir


def test_gptq_checkpoint_is_detected_and_generates_like_its_float_weights(
    gptq_model: tuple[Path, Path],
) -> None:
    quantized_dir, float_dir = gptq_model
    expected = hf_greedy_ids(float_dir, PROMPT, MAX_NEW_TOKENS)
    with running_ferrite(["--model-id", str(quantized_dir), "--dtype", "float32"]) as server:
        assert info(server)["quantize"] == "gptq"
        assert served_greedy_ids(server, PROMPT, MAX_NEW_TOKENS) == expected


def test_gptq_checkpoint_with_fp8_flag_is_refused_with_the_reason(
    gptq_model: tuple[Path, Path],
) -> None:
    quantized_dir, _ = gptq_model
    result = run_launcher(["--model-id", str(quantized_dir), "--quantize", "fp8"])
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "--quantize fp8 cannot be used with this checkpoint" in output, output[-3000:]
    assert "already quantized as gptq" in output
