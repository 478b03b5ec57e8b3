"""KV write kernel (Triton interpreter) against plain indexing."""

from __future__ import annotations

import pytest
import torch

from ferrite_server.kernels.kv_write import write_kv


def _scatter_case(
    num_tokens: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random K/V, NaN caches, distinct random slots with every third token padding (-1)."""
    generator = torch.Generator().manual_seed(num_tokens * 131 + head_dim + block_size)
    num_blocks = 2 * (num_tokens // block_size + 1)
    cache_shape = (num_blocks, block_size, num_kv_heads, head_dim)
    key_cache = torch.full(cache_shape, float("nan"), dtype=dtype)
    slots = torch.randperm(num_blocks * block_size, generator=generator)[:num_tokens]
    slots[::3] = -1
    key = torch.randn(num_tokens, num_kv_heads, head_dim, generator=generator).to(dtype)
    value = torch.randn(num_tokens, num_kv_heads, head_dim, generator=generator).to(dtype)
    return key, value, key_cache, slots


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    ("num_kv_heads", "head_dim", "block_size"), [(2, 64, 8), (1, 128, 16), (3, 128, 32)]
)
def test_write_kv_scatters_rows_and_skips_padding(
    dtype: torch.dtype, num_kv_heads: int, head_dim: int, block_size: int
) -> None:
    key, value, key_cache, slots = _scatter_case(37, num_kv_heads, head_dim, block_size, dtype)
    value_cache = key_cache.clone()
    write_kv(key, value, key_cache, value_cache, slots)

    flat_keys = key_cache.view(-1, num_kv_heads, head_dim)
    flat_values = value_cache.view(-1, num_kv_heads, head_dim)
    written = slots >= 0
    assert torch.equal(flat_keys[slots[written]], key[written])
    assert torch.equal(flat_values[slots[written]], value[written])
    # Every other slot (never addressed, or addressed only by padding) is untouched.
    untouched = torch.ones(flat_keys.shape[0], dtype=torch.bool)
    untouched[slots[written]] = False
    assert torch.isnan(flat_keys[untouched]).all()
    assert torch.isnan(flat_values[untouched]).all()


def test_write_kv_accepts_strided_views_of_a_fused_projection() -> None:
    num_tokens, num_heads, num_kv_heads, head_dim, block_size = 11, 4, 2, 64, 16
    generator = torch.Generator().manual_seed(7)
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, generator=generator)
    kv = qkv[:, num_heads * head_dim :].view(num_tokens, 2 * num_kv_heads, head_dim)
    key, value = kv[:, :num_kv_heads], kv[:, num_kv_heads:]  # non-contiguous views
    assert not key.is_contiguous()
    cache_shape = (3, block_size, num_kv_heads, head_dim)
    key_cache = torch.full(cache_shape, float("nan"))
    value_cache = torch.full(cache_shape, float("nan"))
    slots = torch.tensor([47, 3, 20, 21, 0, 5, 33, 34, 35, 46, 16], dtype=torch.int64)
    write_kv(key, value, key_cache, value_cache, slots)
    assert torch.equal(key_cache.view(-1, num_kv_heads, head_dim)[slots], key)
    assert torch.equal(value_cache.view(-1, num_kv_heads, head_dim)[slots], value)


def test_write_kv_rejects_mismatched_cache() -> None:
    key = torch.randn(4, 2, 64)
    cache = torch.randn(2, 16, 4, 64)  # 4 kv heads, K/V have 2
    with pytest.raises(ValueError, match="heads"):
        write_kv(key, key.clone(), cache, cache.clone(), torch.arange(4))
