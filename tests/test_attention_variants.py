"""The torch reference backend's sliding windows and logit soft-caps, against attention written
out token by token (each query over exactly the keys it may see).

Cases mix a whole prompt, a chunk after a cached prefix and several decodes in one step, with
windows shorter than every context, so a key that leaks in (or one that is dropped) changes the
result; the decodes go through the batched decode path and a single decode through the loop.
"""

from __future__ import annotations

import math

import pytest
import torch

from ferrite_server.layers.attention.backend import AttentionVariant
from ferrite_server.layers.attention.torch_backend import TorchAttentionBackend
from tests.kernels.paged_cases import PagedBatch, PagedCase, build_batch


def _dense_expected(batch: PagedBatch, variant: AttentionVariant) -> torch.Tensor:
    metadata, block_size = batch.metadata, batch.key_cache.shape[1]
    num_heads, num_kv_heads = batch.query.shape[1], batch.key_cache.shape[2]
    out = torch.empty_like(batch.query)
    for seq in range(metadata.num_seqs):
        start, end = metadata.query_start_loc_cpu[seq], metadata.query_start_loc_cpu[seq + 1]
        seq_len = metadata.seq_lens_cpu[seq]
        positions = torch.arange(seq_len)
        blocks = metadata.block_tables[seq, positions // block_size].long()
        keys = batch.key_cache[blocks, positions % block_size]  # [seq_len, Hkv, D]
        values = batch.value_cache[blocks, positions % block_size]
        for row in range(start, end):
            position = seq_len - (end - row)
            first = variant.first_visible_position(position)
            for head in range(num_heads):
                kv_head = head // (num_heads // num_kv_heads)
                k = keys[first : position + 1, kv_head]  # [n, D]
                scores = (k @ batch.query[row, head]) * batch.scale
                if variant.logit_softcap is not None:
                    scores = variant.logit_softcap * torch.tanh(scores / variant.logit_softcap)
                weights = scores.softmax(-1)
                out[row, head] = weights @ values[first : position + 1, kv_head]
    return out


# (query_lens, seq_lens): a prompt, a chunk after a cached prefix, two decodes.
MIXED = ((19, 7, 1, 1), (19, 30, 23, 9))
SINGLE_DECODE = ((12, 1), (12, 26))


@pytest.mark.parametrize("lens", [MIXED, SINGLE_DECODE], ids=["mixed", "single-decode"])
@pytest.mark.parametrize(
    "variant",
    [
        AttentionVariant(sliding_window_tokens=5),
        AttentionVariant(sliding_window_tokens=8, logit_softcap=2.0),
        AttentionVariant(logit_softcap=1.5),
    ],
    ids=["window", "window-softcap", "softcap"],
)
def test_torch_backend_matches_dense_attention(
    lens: tuple[tuple[int, ...], tuple[int, ...]], variant: AttentionVariant
) -> None:
    case = PagedCase(lens[0], lens[1], num_kv_heads=2, queries_per_kv=2, head_dim=16, block_size=4)
    batch = build_batch(case, seed=11)
    got = TorchAttentionBackend().forward(
        batch.query, batch.key_cache, batch.value_cache, batch.metadata, batch.scale, variant
    )
    torch.testing.assert_close(got, _dense_expected(batch, variant), atol=1e-5, rtol=1e-5)


def test_window_changes_the_result() -> None:
    # The cases above would pass with any window if contexts fit inside it; they do not.
    case = PagedCase(*MIXED, num_kv_heads=2, queries_per_kv=2, head_dim=16, block_size=4)
    batch = build_batch(case, seed=11)
    backend = TorchAttentionBackend()
    args = (batch.query, batch.key_cache, batch.value_cache, batch.metadata, batch.scale)
    windowed = backend.forward(*args, AttentionVariant(sliding_window_tokens=5))
    full = backend.forward(*args)
    assert not torch.allclose(windowed, full, atol=1e-3)
    assert math.isfinite(float(windowed.abs().max()))
