"""Fused RMSNorm (+ residual) and rotary kernels (Triton interpreter) against the torch layers."""

from __future__ import annotations

import pytest
import torch

from ferrite_server.kernels.rms_norm import add_rms_norm, rms_norm
from ferrite_server.kernels.rotary import rotate_query_key_
from ferrite_server.layers.rotary import RopeConfig, RotaryEmbedding, apply_rotary


def _reference_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    normalized = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normalized.to(x.dtype)


def _tolerance(dtype: torch.dtype) -> dict[str, float]:
    return {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-3, "rtol": 2e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("num_tokens", "hidden_size"), [(1, 64), (7, 576), (3, 1000)])
def test_rms_norm_matches_the_torch_layer(dtype: torch.dtype, num_tokens: int, hidden_size: int) -> None:
    generator = torch.Generator().manual_seed(num_tokens + hidden_size)
    x = (3 * torch.randn(num_tokens, hidden_size, generator=generator)).to(dtype)
    weight = (1 + torch.randn(hidden_size, generator=generator) / 4).to(dtype)
    out = rms_norm(x, weight, 1e-5)
    torch.testing.assert_close(out, _reference_rms_norm(x, weight, 1e-5), **_tolerance(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_add_rms_norm_returns_the_sum_and_its_norm(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(5)
    num_tokens, hidden_size = 9, 320
    x = torch.randn(num_tokens, hidden_size, generator=generator).to(dtype)
    residual = torch.randn(num_tokens, hidden_size, generator=generator).to(dtype)
    weight = torch.randn(hidden_size, generator=generator).to(dtype)
    x_before, residual_before = x.clone(), residual.clone()
    out, summed = add_rms_norm(x, residual, weight, 1e-6)
    assert torch.equal(summed, x + residual)  # rounded once to the model dtype, as unfused
    torch.testing.assert_close(out, _reference_rms_norm(x + residual, weight, 1e-6), **_tolerance(dtype))
    assert torch.equal(x, x_before) and torch.equal(residual, residual_before)  # inputs kept


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("num_heads", "num_kv_heads", "head_dim"), [(4, 4, 64), (8, 2, 128), (9, 3, 64)])
def test_rotary_matches_the_torch_layer_on_fused_qkv_views(
    dtype: torch.dtype, num_heads: int, num_kv_heads: int, head_dim: int
) -> None:
    generator = torch.Generator().manual_seed(num_heads * head_dim)
    num_tokens = 6
    positions = torch.tensor([0, 1, 17, 300, 4095, 9])
    rotary = RotaryEmbedding(head_dim, RopeConfig(theta=500000.0), torch.device("cpu"))
    cos, sin = rotary.cos_sin(positions, dtype)
    width = (num_heads + 2 * num_kv_heads) * head_dim
    qkv = torch.randn(num_tokens, width, generator=generator).to(dtype)
    query = qkv[:, : num_heads * head_dim].view(num_tokens, num_heads, head_dim)
    key = qkv[:, num_heads * head_dim : (num_heads + num_kv_heads) * head_dim].view(
        num_tokens, num_kv_heads, head_dim
    )
    value_before = qkv[:, (num_heads + num_kv_heads) * head_dim :].clone()
    expected_query, expected_key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)

    rotate_query_key_(query, key, cos, sin)

    tolerance = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 4e-3, "rtol": 4e-3}
    torch.testing.assert_close(query, expected_query, **tolerance)
    torch.testing.assert_close(key, expected_key, **tolerance)
    # The value columns of the fused output are not touched.
    assert torch.equal(qkv[:, (num_heads + num_kv_heads) * head_dim :], value_before)


def test_rotary_refuses_mismatched_cos_sin() -> None:
    query, key = torch.randn(2, 4, 64), torch.randn(2, 2, 64)
    with pytest.raises(ValueError, match="cos / sin"):
        rotate_query_key_(query, key, torch.randn(3, 64), torch.randn(3, 64))
