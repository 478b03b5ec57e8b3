"""`attend`'s one-query path: decode rows grouped by KV head give SDPA-with-`enable_gqa`'s
result for every mask shape the torch backend passes; float32 stays on `enable_gqa` itself."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ferrite_server.layers.attention.torch_attention_math import attend

NUM_SEQS, NUM_HEADS, NUM_KV_HEADS, KV_LEN, HEAD_DIM = 3, 6, 2, 21, 16


def inputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    q = torch.randn(NUM_SEQS, NUM_HEADS, 1, HEAD_DIM, generator=generator).to(dtype)
    k = torch.randn(NUM_SEQS, NUM_KV_HEADS, KV_LEN, HEAD_DIM, generator=generator).to(dtype)
    v = torch.randn(NUM_SEQS, NUM_KV_HEADS, KV_LEN, HEAD_DIM, generator=generator).to(dtype)
    return q, k, v


def masks() -> list[torch.Tensor | None]:
    lens = torch.tensor([KV_LEN, 5, 12])
    padded = (torch.arange(KV_LEN)[None, :] < lens[:, None])[:, None, None, :]  # a decode batch
    window = torch.arange(KV_LEN)[None, :] >= KV_LEN - 8  # one sequence's sliding window
    return [None, padded, window]


@pytest.mark.parametrize("mask_index", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_grouped_decode_rows_equal_sdpa_with_gqa(mask_index: int, dtype: torch.dtype) -> None:
    q, k, v = inputs(dtype)
    mask = masks()[mask_index]
    got = attend(q, k, v, mask, 0.25, None)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.25, enable_gqa=True)
    assert got.shape == want.shape == (NUM_SEQS, NUM_HEADS, 1, HEAD_DIM)
    torch.testing.assert_close(got, want, atol=1e-2, rtol=1e-2)  # within one ulp of each other


def test_float32_decode_rows_stay_on_sdpa_with_gqa() -> None:
    q, k, v = inputs(torch.float32)
    mask = masks()[1]
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.25, enable_gqa=True)
    assert torch.equal(attend(q, k, v, mask, 0.25, None), want)
