"""The LoRA shrink / expand Triton kernels (Triton interpreter, fp32 and fp16) against the
torch gather path and PEFT's per-token math, on a batch that mixes adapters and base rows."""

from __future__ import annotations

import pytest
import torch

from ferrite_server.kernels.lora_shrink_expand import lora_shrink_expand
from ferrite_server.layers.lora import NO_ADAPTER, add_gathered
from tests.support.lora_cases import INPUT_SIZE, PART_SIZES, random_layer, reference_delta

TOKEN_ADAPTERS = [1, 1, NO_ADAPTER, 0, 2, 2, 1, NO_ADAPTER, 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernels_match_the_torch_gather_path(dtype: torch.dtype) -> None:
    case = random_layer(dtype=dtype, seed=5)
    layer = case.layer
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(len(TOKEN_ADAPTERS), INPUT_SIZE, generator=generator).to(dtype)
    base = torch.randn(len(TOKEN_ADAPTERS), sum(PART_SIZES), generator=generator).to(dtype)
    adapters = torch.tensor(TOKEN_ADAPTERS, dtype=torch.int32)
    # Small tiles: the output and input dims cross tile edges, and parts straddle tiles.
    out = lora_shrink_expand(
        base.clone(), x, layer.lora_a, layer.lora_b, layer.row_shrink_offsets, adapters,
        block_out=4, block_k=16,
    )
    gathered = add_gathered(base.float().clone(), x.float(), layer.lora_a.float(), layer.lora_b.float(),
                            layer.parts, adapters)
    expected = base.double() + reference_delta(case, x.float(), TOKEN_ADAPTERS)
    if dtype == torch.float32:
        torch.testing.assert_close(out, gathered, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-4)
    else:  # weights and output rounded to float16
        scale = expected.abs().max().item()
        assert (out.double() - expected).abs().max().item() < 2e-3 * scale
    base_rows = [row for row, adapter in enumerate(TOKEN_ADAPTERS) if adapter == NO_ADAPTER]
    assert torch.equal(out[base_rows], base[base_rows])


def test_an_empty_batch_is_a_no_op() -> None:
    layer = random_layer().layer
    y = torch.zeros(0, sum(PART_SIZES))
    out = lora_shrink_expand(y, torch.zeros(0, INPUT_SIZE), layer.lora_a, layer.lora_b,
                             layer.row_shrink_offsets, torch.zeros(0, dtype=torch.int32))
    assert out.shape == (0, sum(PART_SIZES))
