"""Pre-quantized bitsandbytes checkpoints (saved by transformers) are detected and served.

transformers quantizes a tiny float model with bitsandbytes (int8 and nf4, on CPU) and saves
it; ferrite detects `quant_method: bitsandbytes` without --quantize, dequantizes the stored
codes while reading and requantizes them, which must give back exactly the stored codes; its
logits then match transformers running the same quantized checkpoint.

Like with like: on CPUs with AVX-512 BF16, bitsandbytes' `Linear4bit` (what transformers runs)
repacks its weight at the first forward into a layout for a fused kernel that computes in
bfloat16 (`support_avx512bf16_for_cpu`, the library's own CPU-feature switch), while ferrite
calls `matmul_4bit` on the stored layout, which dequantizes and multiplies in float32 on every
CPU. The reference turns that switch off, so both sides run the same float32 arithmetic on any
machine and the tolerance stays the float32 one; the bf16 repack is checked separately against
its own (bfloat16) bound where the CPU has it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from bitsandbytes.nn import Linear4bit
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from ferrite_server.engine.model_runner import ModelRunner
from tests.support.engines import shard_config
from tests.support.quant_eval import prompt_logits
from tests.support.tiny_models import TINY_VOCAB_SIZE, TinyModelSpec, write_tiny_model

# Both run bitsandbytes' CPU matmuls on the same codes; int8 activations round per call.
LOGIT_TOLERANCE = {"int8": 2e-2, "nf4": 1e-3}
# bfloat16 keeps 8 mantissa bits (relative rounding 2**-9 per operand): over the tiny model's
# few layers with logits of magnitude ~1-5, a few hundredths of difference is the expected size.
BF16_REPACK_LOGIT_TOLERANCE = 0.2
MEAN_LOGIT_BOUND = {"bitsandbytes": 0.1, "bitsandbytes-nf4": 0.25, "bitsandbytes-fp4": 0.4}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _set_cpu_bf16_repack(model: torch.nn.Module, enabled: bool) -> int:
    """Sets bitsandbytes' AVX-512 BF16 repack switch on every 4-bit layer; returns how many."""
    layers = [module for module in model.modules() if isinstance(module, Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = enabled
    return len(layers)


def _bnb_config(kind: str) -> BitsAndBytesConfig:
    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_prequantized_checkpoint_matches_transformers(tmp_path: Path, kind: str) -> None:
    source = write_tiny_model(tmp_path / "float", TinyModelSpec(seed=6))
    hf_model = AutoModelForCausalLM.from_pretrained(
        source, quantization_config=_bnb_config(kind), device_map="cpu", dtype=torch.float32
    )
    if kind == "nf4":
        assert _set_cpu_bf16_repack(hf_model, enabled=False) > 0
    quantized_dir = tmp_path / kind
    hf_model.save_pretrained(quantized_dir)
    runner = ModelRunner.load(shard_config(quantized_dir))
    expected_name = "bitsandbytes" if kind == "int8" else "bitsandbytes-nf4"
    assert runner.facts.quantization == expected_name

    layer = runner.model.model.layers[1].self_attn.o_proj
    stored = load_file(quantized_dir / "model.safetensors")
    if kind == "int8":  # the requantized codes are the stored ones
        assert torch.equal(layer.int8_weight, stored["model.layers.1.self_attn.o_proj.weight"])
    else:
        assert torch.equal(layer.packed_4bit, stored["model.layers.1.self_attn.o_proj.weight"])

    prompt = torch.randint(6, TINY_VOCAB_SIZE, (24,), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = hf_model(prompt[None]).logits[0].float()
    got = prompt_logits(runner, prompt.tolist())
    assert (got - expected).abs().max().item() < LOGIT_TOLERANCE[kind]
    if kind == "nf4":  # ferrite kept the stored layout: the same arithmetic on every CPU
        assert not getattr(layer.bnb_state, "packing_format_for_cpu", False)


def test_nf4_reference_with_the_cpu_bf16_repack_stays_within_bfloat16_rounding(
    tmp_path: Path,
) -> None:
    """Where the CPU has AVX-512 BF16, transformers' default nf4 path (the bf16 repack) differs
    from ferrite's float32 path by bfloat16 rounding only; elsewhere the library leaves the
    switch off and both paths are the same one."""
    from bitsandbytes.functional import has_avx512bf16

    source = write_tiny_model(tmp_path / "float", TinyModelSpec(seed=6))
    hf_model = AutoModelForCausalLM.from_pretrained(
        source, quantization_config=_bnb_config("nf4"), device_map="cpu", dtype=torch.float32
    )
    quantized_dir = tmp_path / "nf4"
    hf_model.save_pretrained(quantized_dir)
    runner = ModelRunner.load(shard_config(quantized_dir))
    switches = {m.support_avx512bf16_for_cpu for m in hf_model.modules() if isinstance(m, Linear4bit)}
    assert switches == {bool(has_avx512bf16())}
    prompt = torch.randint(6, TINY_VOCAB_SIZE, (24,), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = hf_model(prompt[None]).logits[0].float()
    repacked = {
        bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False))
        for m in hf_model.modules()
        if isinstance(m, Linear4bit)
    }
    assert repacked == {bool(has_avx512bf16())}
    difference = (prompt_logits(runner, prompt.tolist()) - expected).abs().max().item()
    tolerance = BF16_REPACK_LOGIT_TOLERANCE if has_avx512bf16() else LOGIT_TOLERANCE["nf4"]
    assert difference < tolerance


@pytest.mark.parametrize("quantize", ["bitsandbytes", "bitsandbytes-nf4", "bitsandbytes-fp4"])
def test_on_the_fly_bitsandbytes_keeps_a_tiny_model_close(tmp_path: Path, quantize: str) -> None:
    """Every bitsandbytes flavour quantizes a float checkpoint at load on CPU; its logits stay
    within rounding of the float model's: on average within MEAN_LOGIT_BOUND x their spread
    (fp4's floating-point codes fit Gaussian weights worse than nf4's normal quantiles)."""
    from dataclasses import replace

    model_dir = write_tiny_model(tmp_path / "float", TinyModelSpec(seed=7))
    config = shard_config(model_dir)
    reference = ModelRunner.load(config)
    quantized = ModelRunner.load(replace(config, quantize=quantize))  # type: ignore[arg-type]
    assert quantized.facts.quantization == quantize
    assert not hasattr(quantized.model.model.layers[0].mlp.down_proj, "weight")  # float freed
    prompt = torch.randint(6, TINY_VOCAB_SIZE, (24,), generator=torch.Generator().manual_seed(2))
    expected = prompt_logits(reference, prompt.tolist())
    difference = (prompt_logits(quantized, prompt.tolist()) - expected).abs().mean().item()
    assert 0 < difference < MEAN_LOGIT_BOUND[quantize] * expected.std().item()
