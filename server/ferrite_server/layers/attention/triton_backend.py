"""The Triton attention backend: KV write, paged decode and varlen prefill kernels.

forward() picks the kernel per step: a pure-decode step (one new token per sequence) takes the
split-context decode kernel, which is bandwidth-bound and GQA-packed; any step with a prompt or
a chunk in it (possibly mixed with decodes) takes the varlen kernel, which handles every
sequence's query length and cached prefix in one launch.

Runs on CUDA, or on CPU tensors through Triton's interpreter (TRITON_INTERPRET=1 in the
process environment before Triton kernels are first imported; slow, for tests only).

An fp8 KV cache (kv_quant.py): new rows are quantized in torch and the write kernel copies their
bytes; the attention kernels load e4m3, widen it to the query's dtype and fold the per-tensor
scales into the softmax scale and the output. Widening e4m3 in Triton needs FP8 conversion
support (compute capability 8.9+), so older GPUs are refused and pointed to the torch backend.
"""

from __future__ import annotations

import torch
import triton

from ferrite_server.engine.errors import UnsupportedModelError
from ferrite_server.kernels.attention_inputs import PagedAttentionInputs
from ferrite_server.kernels.kv_write import write_kv as triton_write_kv
from ferrite_server.kernels.paged_decode_attention import paged_decode_attention
from ferrite_server.kernels.varlen_prefill_attention import varlen_prefill_attention
from ferrite_server.layers.attention.backend import (
    FULL_ATTENTION,
    AttentionMetadata,
    AttentionVariant,
)
from ferrite_server.layers.attention.kv_quant import (
    KVCacheQuant,
    as_bytes,
    is_fp8_cache,
    quantize_kv,
)

_FP8_CONVERSION_CAPABILITY = (8, 9)


def triton_interpreter_enabled() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (decided when kernels are defined)."""
    return bool(triton.knobs.runtime.interpret)


class TritonAttentionBackend:
    name = "triton"

    def __init__(self, device: torch.device, kv_quant: KVCacheQuant = KVCacheQuant()) -> None:
        if device.type != "cuda" and not triton_interpreter_enabled():
            raise UnsupportedModelError(
                f"the triton attention backend needs a CUDA device (got {device}); on CPU it runs "
                "only under Triton's interpreter (TRITON_INTERPRET=1), which is for tests"
            )
        if kv_quant.fp8 and device.type == "cuda":
            capability = torch.cuda.get_device_capability(device)
            if capability < _FP8_CONVERSION_CAPABILITY:
                raise UnsupportedModelError(
                    f"--kv-cache-dtype fp8 with the triton attention backend needs compute "
                    f"capability 8.9+ for FP8 conversions (this GPU: {capability[0]}.{capability[1]}); "
                    "use --attention-backend torch or --kv-cache-dtype auto"
                )
        self.device = device
        self.kv_quant = kv_quant

    def write_kv(
        self,
        key: torch.Tensor,  # [T, num_kv_heads, head_dim]
        value: torch.Tensor,  # [T, num_kv_heads, head_dim]
        key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        value_cache: torch.Tensor,
        slot_mapping: torch.Tensor,  # [T] int64; slots < 0 are padding and skipped
    ) -> None:
        if is_fp8_cache(key_cache):
            key = as_bytes(quantize_kv(key, self.kv_quant.k_scale))
            value = as_bytes(quantize_kv(value, self.kv_quant.v_scale))
            key_cache, value_cache = as_bytes(key_cache), as_bytes(value_cache)
        triton_write_kv(key, value, key_cache, value_cache, slot_mapping)

    def forward(
        self,
        query: torch.Tensor,  # [T, num_heads, head_dim]
        key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        value_cache: torch.Tensor,
        metadata: AttentionMetadata,
        scale: float,
        variant: AttentionVariant = FULL_ATTENTION,
    ) -> torch.Tensor:  # [T, num_heads, head_dim]
        output = torch.empty_like(query)
        k_scale, v_scale = 1.0, 1.0
        if is_fp8_cache(key_cache):
            k_scale, v_scale = self.kv_quant.k_scale, self.kv_quant.v_scale
        inputs = PagedAttentionInputs(
            query, key_cache, value_cache, metadata, scale, k_scale, v_scale, variant
        )
        if is_pure_decode(query, metadata):
            return paged_decode_attention(inputs, output)
        return varlen_prefill_attention(inputs, output)


def is_pure_decode(query: torch.Tensor, metadata: AttentionMetadata) -> bool:
    """Every sequence has exactly one new token (then query row s belongs to sequence s)."""
    return metadata.max_query_len == 1 and query.shape[0] == metadata.num_seqs
