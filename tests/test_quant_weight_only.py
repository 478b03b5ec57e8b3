"""`--quantize int8` / `int4`: weight-only codes, the CPU kernels against dequantized products,
tensor-parallel slices, and a tiny model (LM head included) on CPU.

The bundled model's quality bounds are in test_quant_bundled_model.py. The CUDA products
(weight_only_ops.CudaInt4Linear / CudaInt8Linear) are not run here: this project's test
machines have no GPU.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ferrite_server.engine.model_runner import ModelRunner
from ferrite_server.layers.linear import ColumnParallelLinear, RowParallelLinear
from ferrite_server.layers.placement import LayerPlacement
from ferrite_server.layers.quantization.config import QuantizationConfig, resolve_quantization
from ferrite_server.layers.quantization.weight_only import WeightOnlyParams
from ferrite_server.layers.quantization import weight_only_ops
from ferrite_server.layers.quantization.weight_only_ops import (
    CpuInt4Linear,
    CpuInt8Linear,
    DequantizingLinear,
    dequantize_int4,
    dequantize_int8,
    quantize_int4,
    quantize_int8,
    weight_only_linear,
)
from ferrite_server.weights import TensorParallelRank, weight_loader_of
from tests.support.engines import shard_config
from tests.support.quant_eval import prompt_logits
from tests.support.tiny_models import TINY_VOCAB_SIZE, TinyModelSpec, write_tiny_model

# The CPU kernels take bfloat16 activations (8 mantissa bits): relative to the largest output.
BF16_PRODUCT_TOLERANCE = 0.02
# Tiny random models: logits within these multiples of their spread (as test_quant_fp8.py).
LOGIT_MEAN_TOLERANCE = {"int8": 0.05, "int4": 0.25}
LOGIT_MAX_TOLERANCE = {"int8": 0.4, "int4": 1.5}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.float() - expected).abs().max() / expected.abs().max()).item()


def test_int8_codes_are_within_half_a_step_of_each_weight() -> None:
    weight = torch.randn(24, 40, generator=torch.Generator().manual_seed(0))
    quantized = quantize_int8(weight)
    assert quantized.codes.dtype == torch.int8 and quantized.scales.shape == (24,)
    assert int(quantized.codes.abs().max()) == 127  # each row's largest magnitude maps to 127
    error = (dequantize_int8(quantized, torch.float32) - weight).abs()
    assert (error <= quantized.scales[:, None] / 2 + 1e-7).all()


def test_int4_reproduces_a_weight_already_on_a_group_grid() -> None:
    """A group whose values are min + scale * code (as GGUF Q4_1 blocks are) comes back exactly:
    its min and max are on the grid, so the codes, scales and zeros are recovered."""
    generator = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 16, (16, 64), generator=generator)
    codes[:, ::32] = 0  # every group of 32 holds a 0 and a 15
    codes[:, 1::32] = 15
    scales = torch.rand(16, 2, generator=generator) + 0.1
    lows = torch.randn(16, 2, generator=generator)
    grid = lows.repeat_interleave(32, 1) + scales.repeat_interleave(32, 1) * codes
    quantized = quantize_int4(grid, group_size=32)
    assert torch.equal(quantized.codes.long(), codes)
    assert torch.allclose(dequantize_int4(quantized, torch.float32), grid, atol=1e-5)


# The last: int8 takes the dequantize-and-matmul path.
@pytest.mark.parametrize("rows", [1, 5, weight_only_ops.CPU_INT8_DEQUANT_MIN_ROWS])
def test_cpu_kernels_agree_with_the_dequantized_product(rows: int) -> None:
    generator = torch.Generator().manual_seed(rows)
    weight = torch.randn(48, 64, generator=generator)
    x = torch.randn(rows, 64, generator=generator)
    int8, int4 = quantize_int8(weight), quantize_int4(weight, group_size=32)
    for quantized, reference in (
        (int8, dequantize_int8(int8, torch.float32)),
        (int4, dequantize_int4(int4, torch.float32)),
    ):
        product = weight_only_linear(quantized)
        assert isinstance(product, CpuInt8Linear | CpuInt4Linear)
        expected = F.linear(x, reference)
        got = product(x)
        assert got.dtype == torch.float32 and got.shape == (rows, 48)
        assert _relative_error(got, expected) < BF16_PRODUCT_TOLERANCE


def test_a_large_int8_weight_is_dequantized_in_slices_with_the_same_product(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    generator = torch.Generator().manual_seed(9)
    quantized = quantize_int8(torch.randn(48, 64, generator=generator))
    x = torch.randn(weight_only_ops.CPU_INT8_SLICED_DEQUANT_MIN_ROWS, 64, generator=generator)
    whole = weight_only_linear(quantized)(x)
    monkeypatch.setattr(weight_only_ops, "CPU_INT8_DEQUANT_SLICE_ROWS", 20)  # 20 + 20 + 8 rows
    dequantized = []
    real_dequantize = weight_only_ops.dequantize_int8
    monkeypatch.setattr(
        weight_only_ops, "dequantize_int8",
        lambda weight, dtype: dequantized.append(weight.codes.shape[0]) or real_dequantize(weight, dtype),
    )
    sliced = weight_only_linear(quantized)(x)
    assert dequantized == [20, 20, 8]
    assert sliced.shape == whole.shape and torch.allclose(sliced, whole, rtol=1e-5, atol=1e-5)


def test_many_int4_rows_unpack_the_weight_through_the_kernel_then_multiply_densely() -> None:
    generator = torch.Generator().manual_seed(4)
    quantized = quantize_int4(torch.randn(48, 64, generator=generator), group_size=32)
    product = weight_only_linear(quantized)
    assert isinstance(product, CpuInt4Linear)
    kernel_rows: list[int] = []
    real_kernel = product._kernel
    product._kernel = lambda x: kernel_rows.append(x.shape[0]) or real_kernel(x)  # type: ignore[method-assign]
    reference = dequantize_int4(quantized, torch.float32)
    few = weight_only_ops.CPU_INT4_DENSE_MIN_ROWS_PER_INPUT * 64 - 1
    for rows in (few, few + 1):
        x = torch.randn(rows, 64, generator=generator)
        got = product(x)
        assert got.dtype == torch.float32 and got.shape == (rows, 48)
        assert _relative_error(got, F.linear(x, reference)) < BF16_PRODUCT_TOLERANCE
    # Below 2K rows the kernel multiplies the rows; from 2K on it only unpacks (K identity rows).
    assert kernel_rows == [few, 64]


def test_an_output_size_the_int4_kernel_cannot_block_dequantizes_per_call() -> None:
    weight = torch.randn(20, 64, generator=torch.Generator().manual_seed(3))  # 20 % 16 != 0
    quantized = quantize_int4(weight, group_size=32)
    product = weight_only_linear(quantized)
    assert isinstance(product, DequantizingLinear)
    x = torch.randn(3, 64)
    assert torch.allclose(product(x), F.linear(x, dequantize_int4(quantized, torch.float32)))


@pytest.mark.parametrize("rank", [0, 1])
def test_tensor_parallel_slices_quantize_like_the_sliced_weight(rank: int) -> None:
    """Each rank quantizes only its slice: column layers keep output rows, row layers input
    columns (whole groups), as quantizing that slice of the float weight alone would."""
    weight = torch.randn(32, 128, generator=torch.Generator().manual_seed(4))
    config = QuantizationConfig("int4", WeightOnlyParams(bits=4, group_size=32), False)
    tp = TensorParallelRank(rank, 2)
    placement = LayerPlacement(torch.float32, torch.device("cpu"), tp, quantization=config)
    for layer, expected_slice in (
        (ColumnParallelLinear(128, 32, False, placement), weight[16 * rank : 16 * rank + 16]),
        (RowParallelLinear(128, 32, False, placement), weight[:, 64 * rank : 64 * rank + 64]),
    ):
        weight_loader_of(layer.weight)(layer.weight, weight, None)
        layer.quant_method.process_weights_after_loading(layer)
        assert not hasattr(layer, "weight")  # the float copy is gone
        x = torch.randn(2, layer.shape.local_input_size)
        expected = F.linear(x, dequantize_int4(quantize_int4(expected_slice, 32), torch.float32))
        assert _relative_error(layer(x), expected) < BF16_PRODUCT_TOLERANCE


def test_flags_quantize_a_float_checkpoint_on_the_fly() -> None:
    for name, bits in (("int8", 8), ("int4", 4)):
        config = resolve_quantization(name, {})  # type: ignore[arg-type]
        assert config is not None and config.name == name and not config.prequantized
        assert config.params == WeightOnlyParams(bits=bits)  # type: ignore[comparison-overlap]


@pytest.mark.parametrize("quantize", ["int8", "int4"])
def test_tiny_model_logits_stay_close_with_a_quantized_lm_head(
    tmp_path: Path, quantize: str
) -> None:
    model_dir = write_tiny_model(tmp_path / "tiny", TinyModelSpec(seed=5))
    config = shard_config(model_dir)
    reference = ModelRunner.load(config)
    quantized = ModelRunner.load(replace(config, quantize=quantize))  # type: ignore[arg-type]
    assert quantized.facts.quantization == quantize
    head = quantized.model.lm_head
    assert head.weight_only_product is not None  # the LM head runs quantized too
    down = quantized.model.model.layers[0].mlp.down_proj
    assert not hasattr(down, "weight") and down.weight_only_product is not None
    assert quantized.facts.model_memory_bytes < 0.75 * reference.facts.model_memory_bytes
    prompt = torch.randint(6, TINY_VOCAB_SIZE, (40,), generator=torch.Generator().manual_seed(6))
    expected = prompt_logits(reference, prompt.tolist())
    got = prompt_logits(quantized, prompt.tolist())
    spread = expected.std().item()
    difference = (got - expected).abs()
    assert difference.mean().item() < LOGIT_MEAN_TOLERANCE[quantize] * spread
    assert difference.max().item() < LOGIT_MAX_TOLERANCE[quantize] * spread
    assert difference.max().item() > 0  # it really ran quantized
