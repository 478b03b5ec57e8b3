"""FP8 KV cache in the Triton kernels (interpreter) and both attention backends.

The Triton interpreter loads float8 e4m3 and widens it exactly; its float32 -> e4m3 conversion
is wrong when rounding carries into the exponent (e.g. 0.4846 becomes 0.25, not 0.5), which is
why new K/V rows are quantized in torch and the write kernel only moves bytes (kv_quant.py).
The last test pins that finding down, so a Triton that fixes it shows up here.
"""

from __future__ import annotations

import os

import pytest
import torch
from paged_cases import PagedCase, build_batch, poisoned_like, reference_attention
from test_kernels_triton_backend import _metadata_for_step

from ferrite_server.kernels.attention_inputs import PagedAttentionInputs
from ferrite_server.kernels.paged_decode_attention import DecodeTiles, paged_decode_attention
from ferrite_server.kernels.varlen_prefill_attention import varlen_prefill_attention
from ferrite_server.layers.attention.kv_quant import FP8_KV_DTYPE, KVCacheQuant, quantize_kv
from ferrite_server.layers.attention.torch_backend import TorchAttentionBackend
from ferrite_server.layers.attention.triton_backend import TritonAttentionBackend

# Non-trivial scales, so a kernel that forgets one is caught.
K_SCALE, V_SCALE = 0.5, 2.0


def _fp8_inputs(case: PagedCase) -> tuple[PagedAttentionInputs, torch.Tensor]:
    """The case's caches quantized to e4m3, and the reference over their dequantized values."""
    batch = build_batch(case)
    key_cache = quantize_kv(batch.key_cache, K_SCALE)
    value_cache = quantize_kv(batch.value_cache, V_SCALE)
    dequantized = type(batch)(
        batch.query,
        key_cache.float() * K_SCALE,
        value_cache.float() * V_SCALE,
        batch.metadata,
        batch.scale,
    )
    inputs = PagedAttentionInputs(
        batch.query, key_cache, value_cache, batch.metadata, batch.scale, K_SCALE, V_SCALE
    )
    return inputs, reference_attention(dequantized)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("partition_size", [None, 32])  # one partition, and split + reduce
def test_decode_kernel_reads_fp8_cache(dtype: torch.dtype, partition_size: int | None) -> None:
    case = PagedCase(
        (1, 1, 1),
        (9, 40, 77),
        num_kv_heads=2,
        queries_per_kv=4,
        head_dim=64,
        block_size=16,
        dtype=dtype,
    )
    inputs, expected = _fp8_inputs(case)
    out = poisoned_like(inputs.query)
    paged_decode_attention(inputs, out, DecodeTiles(partition_size_tokens=partition_size))
    tolerance = 2e-5 if dtype == torch.float32 else 4e-3
    torch.testing.assert_close(out.float(), expected, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_varlen_kernel_reads_fp8_cache(dtype: torch.dtype) -> None:
    case = PagedCase(
        (13, 1, 30),
        (13, 21, 45),
        num_kv_heads=2,
        queries_per_kv=2,
        head_dim=64,
        block_size=16,
        dtype=dtype,
    )
    inputs, expected = _fp8_inputs(case)
    out = poisoned_like(inputs.query)
    varlen_prefill_attention(inputs, out)
    tolerance = 2e-5 if dtype == torch.float32 else 4e-3
    torch.testing.assert_close(out.float(), expected, atol=tolerance, rtol=tolerance)


def test_backends_agree_on_fp8_cache_over_steps() -> None:
    """Writes (torch quantization + byte-copy kernel vs index_copy) give identical caches;
    reads agree with the torch backend's widen-and-scale reference."""
    num_kv_heads, queries_per_kv, head_dim, block_size, num_blocks = 2, 4, 64, 16, 24
    kv_quant = KVCacheQuant(fp8=True, k_scale=K_SCALE, v_scale=V_SCALE)
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    triton_caches = (torch.zeros(shape, dtype=FP8_KV_DTYPE), torch.zeros(shape, dtype=FP8_KV_DTYPE))
    torch_caches = (triton_caches[0].clone(), triton_caches[1].clone())
    triton_backend = TritonAttentionBackend(torch.device("cpu"), kv_quant)
    torch_backend = TorchAttentionBackend(kv_quant)
    generator = torch.Generator().manual_seed(11)
    block_order = torch.randperm(num_blocks, generator=generator)
    for query_lens, seq_lens in [((40, 30), (40, 30)), ((1, 25), (41, 55)), ((1, 1), (42, 56))]:
        metadata = _metadata_for_step(query_lens, seq_lens, block_order)
        num_tokens = sum(query_lens)
        query = torch.randn(
            num_tokens, num_kv_heads * queries_per_kv, head_dim, generator=generator
        )
        key = torch.randn(num_tokens, num_kv_heads, head_dim, generator=generator) * 3
        value = torch.randn(num_tokens, num_kv_heads, head_dim, generator=generator)
        outputs = []
        for backend, caches in ((triton_backend, triton_caches), (torch_backend, torch_caches)):
            backend.write_kv(key, value, caches[0], caches[1], metadata.slot_mapping)
            outputs.append(backend.forward(query, caches[0], caches[1], metadata, head_dim**-0.5))
        for triton_cache, torch_cache in zip(triton_caches, torch_caches, strict=True):
            assert torch.equal(triton_cache.view(torch.uint8), torch_cache.view(torch.uint8))
        torch.testing.assert_close(outputs[0], outputs[1], atol=1e-4, rtol=1e-4)
    # What was stored is the rounded value / scale: within e4m3's half-ulp (2^-4 relative).
    slots = metadata.slot_mapping
    stored = torch_caches[0].view(-1, num_kv_heads, head_dim)[slots].float() * K_SCALE
    assert ((stored - key).abs() <= key.abs() * 2**-4 + 2**-9 * K_SCALE).all()


def test_interpreter_fp32_to_fp8_conversion_drops_the_carry() -> None:
    """Documents the interpreter bug the design works around (see the module docstring)."""
    import triton
    import triton.language as tl

    assert os.environ.get("TRITON_INTERPRET") == "1"

    @triton.jit
    def _convert(x_ptr, y_ptr, N: tl.constexpr):
        offsets = tl.arange(0, N)
        tl.store(y_ptr + offsets, tl.load(x_ptr + offsets).to(y_ptr.dtype.element_ty))

    x = torch.tensor([0.4846, 1.949, 0.3, 3.0] * 4)
    y = torch.zeros(16, dtype=FP8_KV_DTYPE)
    _convert[(1,)](x, y, N=16)
    torch_rounded = x.to(FP8_KV_DTYPE).float()
    assert torch_rounded[:2].tolist() == [0.5, 2.0]
    assert y.float()[:2].tolist() == [0.25, 1.0]  # the carry into the exponent is lost
    assert torch.equal(y.float()[2:4], torch_rounded[2:4])  # no carry: correct
