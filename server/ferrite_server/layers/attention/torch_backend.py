"""The PyTorch reference attention backend: gather each sequence's KV blocks, then SDPA.

Correct on any device and simple enough to be the reference every kernel is tested against.
Prompt chunks loop over their sequences in Python (few per step); decode tokens (one query
each, most of a busy batch) are attended in one padded SDPA call over all their contexts, so
batching pays on the CPU, where this backend is the one in use. With an fp8 KV cache
(kv_quant.py) new rows are quantized on write and gathered rows are widened and rescaled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
from ferrite_server.layers.attention.torch_attention_math import attend, context_mask
from ferrite_server.layers.attention.torch_decode_batch import DecodeBatch


class TorchAttentionBackend:
    name = "torch"

    def __init__(self, kv_quant: KVCacheQuant = KVCacheQuant()) -> None:
        self.kv_quant = kv_quant
        # One step's metadata is shared by every layer: its decode gather indices are built
        # for the first layer and reused by the others.
        self._decode_batch: tuple[AttentionMetadata, DecodeBatch | None] | None = None

    def write_kv(
        self,
        key: torch.Tensor,  # [T, num_kv_heads, head_dim]
        value: torch.Tensor,  # [T, num_kv_heads, head_dim]
        key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        value_cache: torch.Tensor,
        slot_mapping: torch.Tensor,  # [T] int64
    ) -> None:
        num_kv_heads, head_dim = key_cache.shape[2], key_cache.shape[3]
        if is_fp8_cache(key_cache):  # index_copy_ has no fp8 kernel: copy the bytes
            key = as_bytes(quantize_kv(key, self.kv_quant.k_scale))
            value = as_bytes(quantize_kv(value, self.kv_quant.v_scale))
            key_cache, value_cache = as_bytes(key_cache), as_bytes(value_cache)
        # The cache is contiguous, so [num_blocks * block_size, ...] is a view of it and slot
        # s = block * block_size + offset indexes it directly.
        key_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, key)
        value_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, value)

    def forward(
        self,
        query: torch.Tensor,  # [T, num_heads, head_dim]
        key_cache: torch.Tensor,  # [num_blocks, block_size, num_kv_heads, head_dim]
        value_cache: torch.Tensor,
        metadata: AttentionMetadata,
        scale: float,
        variant: AttentionVariant = FULL_ATTENTION,
    ) -> torch.Tensor:  # [T, num_heads, head_dim]
        block_size = key_cache.shape[1]
        decode_batch = self._decode_batch_for(metadata, block_size)
        if decode_batch is not None and decode_batch.decodes_only:
            kv = (key_cache, value_cache)
            return decode_batch.attend(query, kv, scale, variant, None, self._widen)
        output = torch.empty_like(query)
        if decode_batch is not None:
            decode_batch.attend(query, (key_cache, value_cache), scale, variant, output, self._widen)
        for seq_index in range(metadata.num_seqs):
            if decode_batch is not None and decode_batch.includes(seq_index):
                continue
            query_start = metadata.query_start_loc_cpu[seq_index]
            query_end = metadata.query_start_loc_cpu[seq_index + 1]
            seq_len = metadata.seq_lens_cpu[seq_index]
            num_blocks = -(-seq_len // block_size)
            blocks = metadata.block_tables[seq_index, :num_blocks]
            keys = self._widen(_gather_context(key_cache, blocks, seq_len), query.dtype, True)
            values = self._widen(_gather_context(value_cache, blocks, seq_len), query.dtype, False)
            output[query_start:query_end] = _causal_attention(
                query[query_start:query_end], keys, values, scale, variant
            )
        return output

    def _widen(self, rows: torch.Tensor, dtype: torch.dtype, is_key: bool) -> torch.Tensor:
        """Gathered cache rows [..., D] in the query's dtype (fp8: widened times the scale)."""
        if not is_fp8_cache(rows):
            return rows
        scale = self.kv_quant.k_scale if is_key else self.kv_quant.v_scale
        return rows.to(dtype) * scale

    def _decode_batch_for(self, metadata: AttentionMetadata, block_size: int) -> DecodeBatch | None:
        if self._decode_batch is None or self._decode_batch[0] is not metadata:
            self._decode_batch = (metadata, DecodeBatch.plan(metadata, block_size))
        return self._decode_batch[1]


def _gather_context(
    cache: torch.Tensor, blocks: torch.Tensor, seq_len: int
) -> torch.Tensor:  # cache [num_blocks, B, kv_heads, D], blocks [n] -> [seq_len, kv_heads, D]
    return cache.index_select(0, blocks.long()).flatten(0, 1)[:seq_len]  # whole blocks


def _causal_attention(
    query: torch.Tensor,  # [q_len, num_heads, D]: the last q_len tokens of the context
    keys: torch.Tensor,  # [seq_len, num_kv_heads, D]
    values: torch.Tensor,
    scale: float,
    variant: AttentionVariant,
) -> torch.Tensor:  # [q_len, num_heads, D]
    query_len, seq_len = query.shape[0], keys.shape[0]
    q, k, v = (t.transpose(0, 1) for t in (query, keys, values))  # [heads, len, D]
    plain = variant == FULL_ATTENTION
    if plain and query_len == seq_len > 1:  # a whole prompt: SDPA's own causal mask is faster
        is_gqa = query.shape[1] != keys.shape[1]
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scale, enable_gqa=is_gqa
        )
    else:
        mask = context_mask(query_len, seq_len, variant, query.device)
        out = attend(q, k, v, mask, scale, variant.logit_softcap)
    return out.transpose(0, 1)
