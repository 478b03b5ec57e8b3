"""FP8 weight-only matmul kernel (Triton interpreter) against dequantize-then-matmul.

float32 and float16 activations: the interpreter's bfloat16 dots are wrong (a relative error of
~1e8 on this very kernel), so bfloat16 is checked on a GPU by bench/gpu_checks.py.
"""

from __future__ import annotations

import pytest
import torch

from ferrite_server.kernels.fp8_weight_matmul import Fp8MatmulTiles, fp8_weight_matmul
from ferrite_server.layers.quantization.fp8_ops import quantize_per_channel

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("num_rows", [1, 5, 37])
@pytest.mark.parametrize("split_k", [1, 3])
def test_kernel_matches_dequantized_matmul(dtype: torch.dtype, num_rows: int, split_k: int) -> None:
    generator = torch.Generator().manual_seed(num_rows * 10 + split_k)
    weight, scales = quantize_per_channel(torch.randn(80, 160, generator=generator))
    x = torch.randn(num_rows, 160, generator=generator).to(dtype)
    reference = x.float() @ (weight.float() * scales[:, None]).t()
    # Small tiles: every case crosses tile edges in M, N and K.
    out = fp8_weight_matmul(x, weight, scales, Fp8MatmulTiles(16, 32, 32, split_k=split_k))
    assert out.dtype == dtype and out.shape == (num_rows, 80)
    tolerance = 1e-4 if dtype == torch.float32 else 2e-3 * reference.abs().max().item()
    assert (out.float() - reference).abs().max().item() < tolerance
