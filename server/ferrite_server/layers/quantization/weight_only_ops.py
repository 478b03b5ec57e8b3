"""Weight-only int8 / int4 codes: quantizing a float weight, and y = x W^T on each device.

Formats (one layer's weight W [N, K], N output features):
- int8: symmetric per output channel, W[n, k] ~= q[n, k] * s[n], q in [-127, 127];
- int4: asymmetric per group of G input features, W[n, k] ~= (q[n, k] - 8) * s[n, g] + z[n, g],
  q in [0, 15], g = k // G, with a float zero point z (so a group's min and max are both on the
  grid, and GGUF Q4_0 / Q4_1 / Q4_K blocks of 32 map onto it without another rounding).
This is the convention of PyTorch's own weight-only kernels (`_weight_int8pack_mm`,
`_weight_int4pack_mm[_for_cpu]`: scales_and_zeros [K / G, N, 2]), which run the products:
- CPU: measured on an AVX-512 EPYC (bench/RESULTS.md) these kernels are fast only with bfloat16
  activations (float32 ones take a scalar path, 10-50x slower), so activations are cast to
  bfloat16 for the product and the result back: the weight's own rounding dominates anyway;
  for many rows (prefill) dequantizing int8 once and a dense matmul is ~2-3x faster, and
  from 2K rows on so is unpacking int4 through its kernel (CPU_INT4_DENSE_MIN_ROWS_PER_INPUT);
- CUDA (NOT RUN in this project's tests, no GPU was available): `_weight_int4pack_mm` (tinygemm,
  bfloat16, packed by `_convert_weight_to_int4pack`) and `_weight_int8pack_mm`; a layer whose
  shape or device the kernel refuses at load falls back to dequantizing per call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

INT8_MAX = 127
INT4_LEVELS = 15  # codes 0..15
INT4_MIDPOINT = 8  # the kernels subtract it from each code
# aten's CPU int4 packing blocks output features by 16 (it refuses other N).
CPU_INT4_N_MULTIPLE = 16
# From this many rows on, dequantizing the int8 weight + a dense matmul instead of the
# weight-only kernel on the CPU (bench/cpu_int8_rows.py, 2 threads, the body's shapes: the
# kernel wins up to 32 rows, runs disagree at 64 and 128; at 512 rows dequantizing took 12 ms
# against the kernel's 35 in an earlier one-thread measurement).
CPU_INT8_DEQUANT_MIN_ROWS = 64
# A weight of more output rows is dequantized in slices of this many (a float32 copy of the
# whole 49152 x 576 LM head, 113 MB, falls out of the caches), and only from more rows on,
# since that costs more per element (the head at 64 rows: kernel 42 ms, slices 98 ms; at 128
# rows 89 vs 51 ms).
CPU_INT8_DEQUANT_SLICE_ROWS = 4096
CPU_INT8_SLICED_DEQUANT_MIN_ROWS = 128
# From this many rows per input feature (M >= 2K) on, the CPU int4 product unpacks its weight
# (aten's kernel times the identity: W^T, K rows of kernel work) and runs a dense bfloat16
# matmul, which is ~2.6x faster per row than the kernel from 512 rows on (bench/cpu_int4_rows.py):
# at M = 2K the unpacking is paid back ~1.2x, at a 4096-row prefill step 1.3x (K = 1536) to
# 1.9x (K = 576). aten's packed layout depends on the CPU's vector width, so the kernel is the
# one portable way to read it back.
CPU_INT4_DENSE_MIN_ROWS_PER_INPUT = 2
# tinygemm (CUDA int4) tiles K by inner_k_tiles * 16; the largest that divides K is used.
_CUDA_INNER_K_TILES = (8, 4, 2)


@dataclass(frozen=True)
class Int8Weight:
    codes: torch.Tensor  # int8 [N, K]
    scales: torch.Tensor  # [N], float32


@dataclass(frozen=True)
class Int4Weight:
    codes: torch.Tensor  # uint8 [N, K], values 0..15
    scales: torch.Tensor  # float32 [N, K / G]
    zeros: torch.Tensor  # float32 [N, K / G]: the value of code 8
    group_size: int

    @property
    def scales_and_zeros(self) -> torch.Tensor:  # [K / G, N, 2] as aten's kernels take them
        return torch.stack((self.scales, self.zeros), dim=-1).transpose(0, 1).contiguous()


def quantize_int8(weight: torch.Tensor) -> Int8Weight:
    """Per-output-channel absmax: the largest magnitude of each row maps to 127."""
    w = weight.float()
    scales = (w.abs().amax(dim=1) / INT8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    codes = torch.round(w / scales[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return Int8Weight(codes, scales)


def quantize_int4(weight: torch.Tensor, group_size: int) -> Int4Weight:
    """Per group of `group_size` input features: min -> code 0, max -> code 15."""
    n, k = weight.shape
    if k % group_size:
        raise ValueError(f"int4 group size {group_size} does not divide {k} input features")
    groups = weight.float().reshape(n, k // group_size, group_size)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)  # [N, K / G]
    scales = ((high - low) / INT4_LEVELS).clamp(min=torch.finfo(torch.float32).tiny)
    codes = torch.round((groups - low[..., None]) / scales[..., None]).clamp(0, INT4_LEVELS)
    zeros = low + INT4_MIDPOINT * scales
    return Int4Weight(codes.reshape(n, k).to(torch.uint8), scales, zeros, group_size)


def dequantize_int8(weight: Int8Weight, dtype: torch.dtype) -> torch.Tensor:  # [N, K]
    return (weight.codes.float() * weight.scales[:, None].float()).to(dtype)


def dequantize_int4(weight: Int4Weight, dtype: torch.dtype) -> torch.Tensor:  # [N, K]
    n, k = weight.codes.shape
    groups = weight.codes.reshape(n, -1, weight.group_size).float() - INT4_MIDPOINT
    values = groups * weight.scales[..., None] + weight.zeros[..., None]
    return values.reshape(n, k).to(dtype)


def _bf16_rows(x: torch.Tensor) -> torch.Tensor:
    """x as the CPU kernels take it; no dispatch at all when it already is (a decode step
    makes ~120 of these calls, and each no-op `.to()` still costs a few microseconds)."""
    if x.dtype == torch.bfloat16 and x.is_contiguous():
        return x
    return x.to(torch.bfloat16).contiguous()


def _in_dtype(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return y if y.dtype == dtype else y.to(dtype)


class CpuInt8Linear:
    """aten's int8 weight-only kernel with bfloat16 activations; dense matmul for prefill."""

    def __init__(self, weight: Int8Weight) -> None:
        self.codes = weight.codes.contiguous()
        self.scales = weight.scales.to(torch.bfloat16)
        self.scales_f32 = weight.scales

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # [M, K] -> [M, N] in x's dtype
        sliced = self.codes.shape[0] > CPU_INT8_DEQUANT_SLICE_ROWS
        if x.shape[0] >= (CPU_INT8_SLICED_DEQUANT_MIN_ROWS if sliced else CPU_INT8_DEQUANT_MIN_ROWS):
            return self._dequantized_product(x)
        y = torch.ops.aten._weight_int8pack_mm(_bf16_rows(x), self.codes, self.scales)
        return _in_dtype(y, x.dtype)

    def _dequantized_product(self, x: torch.Tensor) -> torch.Tensor:
        """Dequantized slice by slice (one slice: the whole weight)."""
        step = CPU_INT8_DEQUANT_SLICE_ROWS
        parts = []
        for start in range(0, self.codes.shape[0], step):
            weight = Int8Weight(self.codes[start : start + step], self.scales_f32[start : start + step])
            parts.append(F.linear(x, dequantize_int8(weight, x.dtype)))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def memory_tensors(self) -> tuple[torch.Tensor, ...]:
        return self.codes, self.scales, self.scales_f32


class CpuInt4Linear:
    """aten's int4 weight-only kernel (`_weight_int4pack_mm_for_cpu`), bfloat16 activations."""

    def __init__(self, weight: Int4Weight) -> None:
        self.group_size = weight.group_size
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            weight.codes.to(torch.int32), 1
        )  # uint8 [N, K / 2], blocked along N
        self.scales_and_zeros = weight.scales_and_zeros.to(torch.bfloat16)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # [M, K] -> [M, N] in x's dtype
        rows, inputs = x.shape
        if rows >= CPU_INT4_DENSE_MIN_ROWS_PER_INPUT * inputs:
            return _in_dtype(torch.mm(_bf16_rows(x), self._unpacked_transposed(inputs)), x.dtype)
        return _in_dtype(self._kernel(_bf16_rows(x)), x.dtype)

    def _kernel(self, x: torch.Tensor) -> torch.Tensor:  # bfloat16 [M, K] -> [M, N]
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            x, self.packed, self.group_size, self.scales_and_zeros
        )

    def _unpacked_transposed(self, inputs: int) -> torch.Tensor:  # bfloat16 [K, N] = W^T
        """Each weight as the kernel reads it, rounded to bfloat16; made per call (keeping it
        would undo the int4 memory saving)."""
        return self._kernel(torch.eye(inputs, dtype=torch.bfloat16))

    def memory_tensors(self) -> tuple[torch.Tensor, ...]:
        return self.packed, self.scales_and_zeros


class CudaInt4Linear:
    """NOT RUN here (no GPU): tinygemm's `_weight_int4pack_mm`, bfloat16 activations."""

    def __init__(self, weight: Int4Weight) -> None:
        n, k = weight.codes.shape
        inner_k_tiles = next(t for t in _CUDA_INNER_K_TILES if k % (t * 16) == 0)
        codes = weight.codes.to(torch.int32)
        pairs = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)  # [N, K / 2], even k high
        self.packed = torch.ops.aten._convert_weight_to_int4pack(pairs, inner_k_tiles)
        self.group_size = weight.group_size
        self.scales_and_zeros = weight.scales_and_zeros.to(torch.bfloat16)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm(
            x.to(torch.bfloat16).contiguous(), self.packed, self.group_size, self.scales_and_zeros
        )
        return y.to(x.dtype)

    def memory_tensors(self) -> tuple[torch.Tensor, ...]:
        return self.packed, self.scales_and_zeros


class CudaInt8Linear:
    """NOT RUN here (no GPU): aten's `_weight_int8pack_mm` in the activations' dtype."""

    def __init__(self, weight: Int8Weight) -> None:
        self.codes = weight.codes.contiguous()
        self.scales = weight.scales

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x.contiguous(), self.codes, self.scales.to(x.dtype))

    def memory_tensors(self) -> tuple[torch.Tensor, ...]:
        return self.codes, self.scales


class DequantizingLinear:
    """Any device, any shape: the float weight rebuilt for each product (correct, slow); for
    layers a kernel refuses (e.g. an output size aten's CPU int4 packing cannot block)."""

    def __init__(self, weight: Int8Weight | Int4Weight) -> None:
        self.weight = weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.weight, Int8Weight):
            return F.linear(x, dequantize_int8(self.weight, x.dtype))
        return F.linear(x, dequantize_int4(self.weight, x.dtype))

    def memory_tensors(self) -> tuple[torch.Tensor, ...]:
        w = self.weight
        return (w.codes, w.scales) if isinstance(w, Int8Weight) else (w.codes, w.scales, w.zeros)


WeightOnlyLinear = CpuInt8Linear | CpuInt4Linear | CudaInt4Linear | CudaInt8Linear | DequantizingLinear


def weight_only_linear(weight: Int8Weight | Int4Weight) -> WeightOnlyLinear:
    """The fastest product this device and shape allow (see the module docstring)."""
    device = weight.codes.device
    n = weight.codes.shape[0]
    if device.type == "cpu":
        if isinstance(weight, Int8Weight):
            return CpuInt8Linear(weight)
        if n % CPU_INT4_N_MULTIPLE == 0:
            return CpuInt4Linear(weight)
        return DequantizingLinear(weight)
    if device.type == "cuda":
        try:
            kernel: WeightOnlyLinear = (
                CudaInt8Linear(weight) if isinstance(weight, Int8Weight) else CudaInt4Linear(weight)
            )
            # One product at load: a shape or GPU the kernel refuses fails here, not mid-step.
            kernel(torch.zeros(1, weight.codes.shape[1], dtype=torch.bfloat16, device=device))
            return kernel
        except (RuntimeError, StopIteration):
            return DequantizingLinear(weight)
    return DequantizingLinear(weight)
