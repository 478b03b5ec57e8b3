"""--quantize against the checkpoint's quantization_config: detection and refusals with reasons,
before any weight is read (the shard then exits with the message; see integration-tests)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from ferrite_server.engine.model_runner import ModelRunner
from ferrite_server.layers.quantization.config import (
    QuantizationConfigError,
    resolve_quantization,
)
from ferrite_server.layers.quantization.gptq import GptqParams
from tests.support.engines import shard_config

GPTQ_CONFIG = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": True}


def test_float_checkpoint_takes_the_flag_or_nothing() -> None:
    assert resolve_quantization(None, {}) is None
    for name in ("bitsandbytes", "bitsandbytes-nf4", "bitsandbytes-fp4", "fp8"):
        config = resolve_quantization(name, {})  # type: ignore[arg-type]
        assert config is not None and config.name == name and not config.prequantized


def test_checkpoint_quantization_is_detected_without_the_flag() -> None:
    detected = resolve_quantization(None, {"quantization_config": GPTQ_CONFIG})
    assert detected is not None and detected.name == "gptq" and detected.prequantized
    assert detected.params == GptqParams(bits=4, group_size=128, desc_act=True, zero_offset=1)
    v2 = resolve_quantization(
        "gptq", {"quantization_config": {**GPTQ_CONFIG, "checkpoint_format": "gptq_v2"}}
    )
    assert v2 is not None and v2.params.zero_offset == 0  # type: ignore[union-attr]
    awq = resolve_quantization(
        None,
        {
            "quantization_config": {
                "quant_method": "awq",
                "bits": 4,
                "group_size": 64,
                "zero_point": True,
                "version": "GEMM",
            }
        },
    )
    assert awq is not None and awq.name == "awq"
    fp8 = resolve_quantization(
        "fp8", {"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}
    )
    assert fp8 is not None and fp8.prequantized
    bnb = resolve_quantization(
        None,
        {
            "quantization_config": {
                "quant_method": "bitsandbytes",
                "load_in_4bit": True,
                "bnb_4bit_quant_type": "nf4",
            }
        },
    )
    assert bnb is not None and bnb.name == "bitsandbytes-nf4"


@pytest.mark.parametrize(
    ("requested", "checkpoint", "reason"),
    [
        ("fp8", GPTQ_CONFIG, "already quantized as gptq"),
        ("awq", GPTQ_CONFIG, "already quantized as gptq"),
        ("bitsandbytes", {"quant_method": "fp8"}, "already quantized as fp8"),
        ("gptq", None, "only serves GPTQ checkpoints"),
        ("awq", None, "only serves AWQ checkpoints"),
        (None, {"quant_method": "compressed-tensors"}, "not supported"),
        (None, {**GPTQ_CONFIG, "bits": 3}, "3 bits"),
        (None, {"quant_method": "awq", "version": "gemv"}, "GEMM format only"),
        (
            None,
            {**GPTQ_CONFIG, "modules_to_not_convert": ["model.layers.0.mlp.down_proj"]},
            "unquantized",
        ),
    ],
)
def test_impossible_combinations_are_refused_with_the_reason(
    requested: str | None, checkpoint: dict | None, reason: str
) -> None:
    hf_config = {"quantization_config": checkpoint} if checkpoint else {}
    with pytest.raises(QuantizationConfigError, match=reason):
        resolve_quantization(requested, hf_config)  # type: ignore[arg-type]


def test_refusal_comes_before_any_weight_is_read(tmp_path: Path) -> None:
    """A GPTQ config.json and no weights at all: the refusal, not a missing-file error."""
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "vocab_size": 32,
                "hidden_size": 16,
                "intermediate_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "quantization_config": GPTQ_CONFIG,
            }
        )
    )
    with pytest.raises(QuantizationConfigError, match="--quantize fp8 cannot be used"):
        ModelRunner.load(replace(shard_config(tmp_path), quantize="fp8"))
