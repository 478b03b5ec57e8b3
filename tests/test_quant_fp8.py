"""FP8 (e4m3) weights, on the fly and from FP8 checkpoints, and the FP8 KV cache, on tiny models.

Tolerances, measured against the float32 model of the same checkpoint:
- on-the-fly FP8 weights + FP8 KV cache: logits within LOGIT_MEAN_TOLERANCE x (their standard
  deviation) on average and LOGIT_MAX_TOLERANCE x at worst (e4m3 keeps 3 mantissa bits: a
  2^-4 relative rounding of every weight and cached K/V element);
- FP8 checkpoints: generation equals transformers running the dequantized float weights
  (greedy tokens identical, logprobs within 1e-3): the FP8 weights themselves are exact.
Greedy agreement on a real model (the bundled SmolLM2) is in test_quant_bundled_model.py:
random tiny models have top-2 logit gaps far smaller than any 8-bit rounding.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ferrite_server.engine.engine import Engine
from ferrite_server.engine.model_runner import ModelRunner
from ferrite_server.engine.types import RequestParams, StoppingParams
from ferrite_server.layers.quantization.fp8_ops import (
    FP8_DTYPE,
    fp8_dequant_linear,
    fp8_scaled_mm,
    quantize_per_channel,
)
from tests.support.engine_driver import BlockAllocator, EngineDriver, ScriptedRequest
from tests.support.engines import shard_config
from tests.support.fp8_checkpoints import write_fp8_checkpoints
from tests.support.hf_reference import greedy_reference, load_reference_model
from tests.support.quant_eval import prompt_logits
from tests.support.tiny_models import TINY_VOCAB_SIZE, TinyModelSpec, write_tiny_model

LOGIT_MEAN_TOLERANCE = 0.1
LOGIT_MAX_TOLERANCE = 0.75
MAX_NEW_TOKENS = 10


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_per_channel_quantization_rounds_each_weight_to_e4m3() -> None:
    weight = torch.randn(48, 64, generator=torch.Generator().manual_seed(0)) * torch.rand(48, 1)
    fp8, scales = quantize_per_channel(weight)
    assert fp8.dtype == FP8_DTYPE and scales.shape == (48,)
    assert torch.allclose(fp8.float().abs().amax(dim=1), torch.full((48,), 448.0))
    error = (fp8.float() * scales[:, None] - weight).abs()
    # Half an e4m3 ulp: 2^-4 relative for normal numbers, 2^-10 * scale below 2^-6 * scale.
    assert (error <= weight.abs() * 2**-4 + scales[:, None] * 2**-10).all()


def test_scaled_mm_path_agrees_with_the_dequantizing_fallback() -> None:
    """The GPU path's call (per-token activation scales, rowwise weight scales) runs on CPU
    too: same inputs, within the activations' own e4m3 rounding."""
    generator = torch.Generator().manual_seed(1)
    fp8, scales = quantize_per_channel(torch.randn(32, 64, generator=generator))
    x = torch.randn(5, 64, generator=generator).to(torch.bfloat16)
    fallback = fp8_dequant_linear(x, fp8, scales).float()
    scaled = fp8_scaled_mm(x, fp8, scales)
    assert scaled.dtype == torch.bfloat16 and scaled.shape == (5, 32)
    assert (scaled.float() - fallback).abs().max() < 0.08 * fallback.abs().max()


def test_fp8_weights_and_kv_cache_keep_logits_close(tmp_path: Path) -> None:
    model_dir = write_tiny_model(tmp_path / "tiny", TinyModelSpec(seed=1))
    config = shard_config(model_dir)
    reference = ModelRunner.load(config)
    quantized = ModelRunner.load(replace(config, quantize="fp8", kv_cache_dtype="fp8"))
    assert quantized.facts.quantization == "fp8"
    assert quantized.kv_cache_spec(16).dtype == torch.float8_e4m3fn
    # KV sizing counts one byte per element (the reference stores float32: four).
    assert (
        4 * quantized.kv_cache_spec(16).bytes_per_block
        == reference.kv_cache_spec(16).bytes_per_block
    )
    layer = quantized.model.model.layers[0].mlp.down_proj
    assert layer.weight.dtype == FP8_DTYPE and not layer.use_scaled_mm  # CPU: the fallback
    prompt = torch.randint(6, TINY_VOCAB_SIZE, (40,), generator=torch.Generator().manual_seed(2))
    expected = prompt_logits(reference, prompt.tolist())
    got = prompt_logits(quantized, prompt.tolist())
    spread = expected.std().item()
    difference = (got - expected).abs()
    assert difference.mean().item() < LOGIT_MEAN_TOLERANCE * spread
    assert difference.max().item() < LOGIT_MAX_TOLERANCE * spread
    assert difference.max().item() > 0  # it really ran in fp8


def test_fp8_experts_keep_mixtral_logits_close(tmp_path: Path) -> None:
    # Mixtral's experts are quantized by layers/moe.py, not by the linear layers' method.
    model_dir = write_tiny_model(tmp_path / "mixtral", TinyModelSpec(family="mixtral", seed=6))
    config = shard_config(model_dir)
    reference = ModelRunner.load(config)
    quantized = ModelRunner.load(replace(config, quantize="fp8"))
    experts = quantized.model.model.layers[0].block_sparse_moe
    assert experts.w13.dtype == experts.w2.dtype == FP8_DTYPE
    assert quantized.facts.model_memory_bytes < reference.facts.model_memory_bytes / 2
    prompt = torch.randint(6, TINY_VOCAB_SIZE, (40,), generator=torch.Generator().manual_seed(3))
    expected = prompt_logits(reference, prompt.tolist())
    difference = (prompt_logits(quantized, prompt.tolist()) - expected).abs()
    spread = expected.std().item()
    # Worst case looser than a dense model's: the rounding flips a near-tied top-2 routing of
    # a few tokens (seen: 2 of 40), which then take another expert's output (0.78 x there,
    # 0.35 x at the tokens routed as in float32).
    assert 0 < difference.max().item() < 2 * LOGIT_MAX_TOLERANCE * spread
    assert difference.mean().item() < LOGIT_MEAN_TOLERANCE * spread


@pytest.mark.parametrize("block", [None, (16, 32)], ids=["per-tensor", "block"])
def test_fp8_checkpoint_generates_like_its_dequantized_float_model(
    tmp_path: Path, block: tuple[int, int] | None
) -> None:
    source = write_tiny_model(tmp_path / "tiny", TinyModelSpec(seed=2))
    fp8_dir, float_dir = write_fp8_checkpoints(source, tmp_path, block)
    engine = Engine.load(shard_config(fp8_dir))
    assert engine.info().quantization == "fp8"
    num_blocks = engine.warmup(
        max_batch_prefill_tokens=64, max_batch_size=4, max_total_tokens=64
    ).num_blocks
    params = RequestParams(stopping=StoppingParams(max_new_tokens=MAX_NEW_TOKENS, ignore_eos=True))
    generator = torch.Generator().manual_seed(3)
    prompts = [
        torch.randint(6, TINY_VOCAB_SIZE, (n,), generator=generator).tolist() for n in (5, 17)
    ]
    requests = [ScriptedRequest(i, prompt, params) for i, prompt in enumerate(prompts)]
    EngineDriver(engine, BlockAllocator(num_blocks)).run(requests)
    reference_model = load_reference_model(float_dir)
    reference_model.generation_config.eos_token_id = None
    for request, prompt in zip(requests, prompts, strict=True):
        reference = greedy_reference(reference_model, prompt, MAX_NEW_TOKENS, top_n=0)
        assert request.generated_ids == reference.token_ids
        logprobs = [token.logprob for token in request.tokens]
        assert max(abs(a - b) for a, b in zip(logprobs, reference.logprobs, strict=True)) < 1e-3
