"""Sliding windows and logit soft-caps in the Triton kernels (interpreter) against the torch
reference backend (itself checked against token-by-token attention in
tests/test_attention_variants.py).

Tiny shapes: windows shorter than every context, contexts that span several K/V tiles and
blocks, the decode kernel with several partitions (some wholly before the window) and the
varlen kernel with prompts, chunks after a cached prefix and decodes in one launch.
"""

from __future__ import annotations

import pytest
import torch
from paged_cases import PagedBatch, PagedCase, build_batch, poisoned_like

from ferrite_server.kernels.attention_inputs import PagedAttentionInputs
from ferrite_server.kernels.paged_decode_attention import DecodeTiles, paged_decode_attention
from ferrite_server.kernels.varlen_prefill_attention import VarlenTiles, varlen_prefill_attention
from ferrite_server.layers.attention.backend import AttentionVariant
from ferrite_server.layers.attention.torch_backend import TorchAttentionBackend

VARIANTS = [
    AttentionVariant(sliding_window_tokens=7),
    AttentionVariant(sliding_window_tokens=40, logit_softcap=3.0),
    AttentionVariant(logit_softcap=2.0),
]
VARIANT_IDS = ["window-7", "window-40-softcap", "softcap"]


def _reference(batch: PagedBatch, variant: AttentionVariant) -> torch.Tensor:
    return TorchAttentionBackend().forward(
        batch.query, batch.key_cache, batch.value_cache, batch.metadata, batch.scale, variant
    )


def _inputs(batch: PagedBatch, variant: AttentionVariant) -> PagedAttentionInputs:
    return PagedAttentionInputs(
        batch.query, batch.key_cache, batch.value_cache, batch.metadata, batch.scale,
        variant=variant,
    )


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_decode_kernel_with_variant_matches_reference(variant: AttentionVariant) -> None:
    # Contexts of 150 / 70 / 9 tokens in 32-token partitions: a 7-token window leaves the
    # first partitions of the long ones empty, and the reduce must skip them.
    case = PagedCase(
        query_lens=(1, 1, 1), seq_lens=(150, 70, 9), num_kv_heads=2, queries_per_kv=2,
        head_dim=16, block_size=8,
    )
    batch = build_batch(case, seed=5)
    out = poisoned_like(batch.query)
    paged_decode_attention(_inputs(batch, variant), out, DecodeTiles(partition_size_tokens=32))
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, _reference(batch, variant), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_varlen_kernel_with_variant_matches_reference(variant: AttentionVariant) -> None:
    # A 45-token prompt, a 20-token chunk after a 50-token cached prefix, a decode at
    # position 60 and a 3-token prompt; 16-row programs so one sequence spans several.
    case = PagedCase(
        query_lens=(45, 20, 1, 3), seq_lens=(45, 70, 61, 3), num_kv_heads=2, queries_per_kv=2,
        head_dim=16, block_size=8,
    )
    batch = build_batch(case, seed=6)
    out = poisoned_like(batch.query)
    tiles = VarlenTiles(program_rows=16, block_n=16)
    varlen_prefill_attention(_inputs(batch, variant), out, tiles)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, _reference(batch, variant), atol=2e-5, rtol=2e-5)
