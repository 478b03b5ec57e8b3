"""Dense attention over gathered keys, the math the torch reference backend runs.

SDPA where it can (no soft-cap): it handles GQA without copying K / V. A soft-cap needs the
scores themselves (tanh before the mask), so that case is spelled out; it is the same
expression transformers' eager attention evaluates for Gemma 2.

One query row per sequence (decode) with grouped KV heads is handed to SDPA as the G query rows
of each KV head instead of with `enable_gqa`: the same products, but the CPU kernel then reads
each KV head once for its whole group. In bfloat16 / float16 that is 1.6x (batch 1, 128 keys)
to 5x (32 sequences of up to 1024 keys) faster on this project's CPU, with identical results
(bench/cpu_decode_attention.py); in float32 both take the same time and differ in the last
bits, so float32 (the reference precision) keeps `enable_gqa`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ferrite_server.layers.attention.backend import AttentionVariant


def context_mask(
    query_len: int, seq_len: int, variant: AttentionVariant, device: torch.device
) -> torch.Tensor | None:  # [query_len, seq_len] bool (True: visible), None: no mask needed
    """The last `query_len` of `seq_len` context tokens attending causally (and windowed)."""
    offset = seq_len - query_len  # query i sits at position offset + i
    window = variant.sliding_window_tokens
    if window is None and query_len == 1:
        return None  # a decode token sees its whole context
    query_positions = torch.arange(offset, seq_len, device=device)[:, None]
    key_positions = torch.arange(seq_len, device=device)[None, :]
    visible = key_positions <= query_positions
    if window is not None:
        visible &= key_positions > query_positions - window
    return visible


def attend(
    q: torch.Tensor,  # [..., num_heads, q_len, D]
    k: torch.Tensor,  # [..., num_kv_heads, kv_len, D]
    v: torch.Tensor,
    mask: torch.Tensor | None,  # broadcastable to [..., num_heads, q_len, kv_len] bool
    scale: float,
    logit_softcap: float | None,
) -> torch.Tensor:  # [..., num_heads, q_len, D]
    is_gqa = q.shape[-3] != k.shape[-3]
    if (
        logit_softcap is None and is_gqa and q.shape[-2] == 1 and q.dtype != torch.float32
        and _same_for_every_head(mask)
    ):
        return _attend_one_query_by_group(q, k, v, mask, scale)
    if logit_softcap is None:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=scale, enable_gqa=is_gqa
        )
    if is_gqa:
        group = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(group, dim=-3), v.repeat_interleave(group, dim=-3)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # [..., heads, q_len, kv_len]
    scores = torch.tanh(scores / logit_softcap) * logit_softcap
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights, v)


def _same_for_every_head(mask: torch.Tensor | None) -> bool:
    return mask is None or mask.dim() < 3 or mask.shape[-3] == 1


def _attend_one_query_by_group(
    q: torch.Tensor,  # [..., num_heads, 1, D]
    k: torch.Tensor,  # [..., num_kv_heads, kv_len, D]
    v: torch.Tensor,
    mask: torch.Tensor | None,  # broadcastable to [..., 1, 1, kv_len] (one row for all heads)
    scale: float,
) -> torch.Tensor:  # [..., num_heads, 1, D]
    """Query head h reads KV head h // G (as `enable_gqa` does), so the G heads of one KV head
    are its G query rows: [..., num_kv_heads, G, D]. They share a position, hence the mask."""
    *batch, num_heads, _, head_dim = q.shape
    num_kv_heads = k.shape[-3]
    grouped = q.reshape(*batch, num_kv_heads, num_heads // num_kv_heads, head_dim)
    out = F.scaled_dot_product_attention(grouped, k, v, attn_mask=mask, scale=scale)
    return out.reshape(*batch, num_heads, 1, head_dim)
