"""The native kernels' vector helpers (kernels/cpu/vector_math.h) against torch.

e^x (softmax in the native attention, SiLU in the native MLP) within 3 ulp of float64's exp
over the range where e^x is a normal float, and the in-register bf16 rounding bit for bit equal
to torch's float32 -> bfloat16 conversion (ties, NaN, infinities, denormals included). On a CPU
without AVX-512 the helpers do not exist and the kernels use the scalar loops; the test module
then compiles those (std::exp and c10::BFloat16) and checks the same bounds.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch.utils import cpp_extension

from ferrite_server.kernels.cpu.build import COMPILE_FLAGS, SOURCE_DIR

SOURCE = r"""
#include <torch/extension.h>
#include <cmath>
#include "vector_math.h"

// float32 [16 n] -> e^x, through the 16-lane helper.
at::Tensor vector_exp(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous() && x.numel() % 16 == 0);
  at::Tensor out = at::empty_like(x);
  const float* in = x.data_ptr<float>();
  float* result = out.data_ptr<float>();
  for (int64_t i = 0; i < x.numel(); i += 16) {
#if defined(__AVX512F__)
    _mm512_storeu_ps(result + i, ferrite_vector::exp(_mm512_loadu_ps(in + i)));
#else
    for (int64_t j = i; j < i + 16; ++j) result[j] = std::exp(in[j]);
#endif
  }
  return out;
}

// float32 [16 n] -> bf16, through the 16-lane rounding.
at::Tensor vector_to_bf16(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous() && x.numel() % 16 == 0);
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(at::kBFloat16));
  const float* in = x.data_ptr<float>();
  c10::BFloat16* result = out.data_ptr<c10::BFloat16>();
  for (int64_t i = 0; i < x.numel(); i += 16) {
#if defined(__AVX512F__)
    ferrite_vector::store_as_bf16(result + i, _mm512_loadu_ps(in + i));
#else
    for (int64_t j = i; j < i + 16; ++j) result[j] = c10::BFloat16(in[j]);
#endif
  }
  return out;
}
"""


@pytest.fixture(scope="module")
def helpers(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    build_dir: Path = tmp_path_factory.mktemp("vector_math_build")
    return cpp_extension.load_inline(
        name="ferrite_vector_math_test",
        cpp_sources=[SOURCE],
        functions=["vector_exp", "vector_to_bf16"],
        extra_cflags=list(COMPILE_FLAGS),
        extra_include_paths=[str(SOURCE_DIR)],
        build_directory=str(build_dir),
    )


def test_exp_within_3_ulp_where_the_result_is_normal(helpers: ModuleType) -> None:
    x = torch.linspace(-87.0, 88.5, 1 << 20, dtype=torch.float32)
    ours = helpers.vector_exp(x).double()
    exact = torch.exp(x.double())
    exact_as_float = exact.float()
    ulp = (torch.nextafter(exact_as_float, torch.tensor(float("inf"))) - exact_as_float).double()
    normal = (exact > torch.finfo(torch.float32).tiny) & (exact < torch.finfo(torch.float32).max)
    error_ulp = ((ours - exact).abs() / ulp)[normal]
    assert normal.sum() > 0.99 * x.numel()
    assert error_ulp.max().item() <= 3.0


def test_exp_at_its_edges(helpers: ModuleType) -> None:
    x = torch.tensor([0.0, 1.0, -1.0, -90.0, -104.0, -1000.0, float("-inf"), 10.0] * 2)
    ours = helpers.vector_exp(x)
    assert ours[0].item() == 1.0  # e^0 exactly
    assert abs(ours[1].item() - 2.718281828) < 1e-6
    assert abs(ours[2].item() - 0.367879441) < 1e-7
    # Below the normal range: denormal or zero, never negative, never NaN (softmax of masked
    # or far-below-max scores).
    tiny = ours[3:7]
    assert torch.all(tiny >= 0) and torch.all(tiny < torch.finfo(torch.float32).tiny)
    assert abs(ours[7].item() / 22026.465794806718 - 1.0) < 1e-6


def test_bf16_rounding_equals_torch_bit_for_bit(helpers: ModuleType) -> None:
    generator = torch.Generator().manual_seed(0)
    random_bits = torch.randint(-(2**31), 2**31 - 1, (1 << 18,), generator=generator,
                                dtype=torch.int64).to(torch.int32)
    specials = torch.tensor(
        [0.0, -0.0, 1.0, float("inf"), float("-inf"), float("nan"), 1e-40, -1e-40,
         # Ties: the dropped half exactly 0x8000, with an even and an odd kept bit.
         1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 3.4e38, -3.4e38, 1.17e-38, 65504.0, -2.5, 7.0],
        dtype=torch.float32,
    )
    x = torch.cat([random_bits.view(torch.float32), specials])
    ours = helpers.vector_to_bf16(x)
    expected = x.to(torch.bfloat16)
    same = ours.view(torch.int16) == expected.view(torch.int16)
    both_nan = torch.isnan(ours) & torch.isnan(expected)
    assert torch.all(same | both_nan)
