"""Pre-quantized bitsandbytes checkpoints (saved by transformers) are detected and served.

transformers quantizes a tiny float model with bitsandbytes (int8 and nf4, on CPU) and saves
it; ferrite detects `quant_method: bitsandbytes` without --quantize, dequantizes the stored
codes while reading and requantizes them, which must give back exactly the stored codes; its
logits then match transformers running the same quantized checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from ferrite_server.engine.model_runner import ModelRunner
from tests.support.engines import shard_config
from tests.support.quant_eval import prompt_logits
from tests.support.tiny_models import TINY_VOCAB_SIZE, TinyModelSpec, write_tiny_model
from tests.support.torch_threads import single_threaded_torch

# Both run bitsandbytes' CPU matmuls on the same codes; int8 activations round per call.
LOGIT_TOLERANCE = {"int8": 2e-2, "nf4": 1e-3}
MEAN_LOGIT_BOUND = {"bitsandbytes": 0.1, "bitsandbytes-nf4": 0.25, "bitsandbytes-fp4": 0.4}


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with single_threaded_torch():
        yield


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
