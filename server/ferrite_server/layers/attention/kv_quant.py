"""FP8 KV cache: K and V stored as float8 e4m3 with one scale each (`--kv-cache-dtype fp8`).

A stored element is value / scale saturated to e4m3's +-448; attention reads it back as
element * scale. The scales are per tensor: one for every K and one for every V of every layer,
fixed at KV_SCALE (1.0, vLLM's default when a checkpoint brings no calibrated scales; ferrite
does not read calibrated per-layer `k_scale` / `v_scale` tensors). e4m3 keeps 3 mantissa bits
(relative error <= 2^-4) for magnitudes from 2^-6 to 448, which covers the keys and values of
the models served; smaller values lose relative precision but carry little attention weight.

Because the scales are per tensor they factor out of attention: softmax(q . (k8 * ks)) =
softmax((q . k8) * ks) and sum p (v8 * vs) = vs * sum p v8, so kernels fold them into the
softmax scale and the output instead of rescaling every element.

New K/V rows are quantized in torch before they are written: exact round-to-nearest on every
device (Triton's CPU interpreter rounds float32 -> e4m3 wrongly when the mantissa carries
into the exponent), and the write kernels then only move bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ferrite_server.config import KVCacheDtypeName

FP8_KV_DTYPE = torch.float8_e4m3fn
FP8_KV_MAX = float(torch.finfo(FP8_KV_DTYPE).max)
KV_SCALE = 1.0


@dataclass(frozen=True)
class KVCacheQuant:
    """How K/V are stored: in the compute dtype (fp8 False) or as e4m3 with scales."""

    fp8: bool = False
    k_scale: float = KV_SCALE
    v_scale: float = KV_SCALE

    @classmethod
    def from_name(cls, name: KVCacheDtypeName) -> KVCacheQuant:
        return cls(fp8=name == "fp8")

    def cache_dtype(self, compute_dtype: torch.dtype) -> torch.dtype:
        return FP8_KV_DTYPE if self.fp8 else compute_dtype

    @property
    def name(self) -> str:
        return "fp8" if self.fp8 else "auto"


def quantize_kv(rows: torch.Tensor, scale: float) -> torch.Tensor:
    """rows [T, kv_heads, D] -> e4m3 rows / scale, saturated (a plain cast would give NaN)."""
    return (rows.float() / scale).clamp(-FP8_KV_MAX, FP8_KV_MAX).to(FP8_KV_DTYPE)


def is_fp8_cache(cache: torch.Tensor) -> bool:
    return cache.dtype == FP8_KV_DTYPE


def as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The same memory as uint8: indexing and copy kernels need no fp8 support that way."""
    return tensor.view(torch.uint8)
