"""FP8 (e4m3) building blocks: quantize with scales, dequantize, and the matmuls.

Two matmul paths, chosen per device by `fp8_matmul_available`:
- `torch._scaled_mm` on GPUs with FP8 matrix units (compute capability 8.9+: Ada, Hopper,
  Blackwell): activations are quantized per token on the fly, weights carry one scale per
  output channel ("rowwise" scaling); the product comes out in bfloat16.
- Elsewhere (CPU, older GPUs) a dequantizing fallback: per-channel scales factor out of the
  matmul, so y = (x @ W8^T) * s with W8 widened to x's dtype; block-scaled weights are
  dequantized whole first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
# Smallest scale: keeps an all-zero row from dividing by zero.
_MIN_SCALE = 1e-12
_FP8_UNITS_CAPABILITY = (8, 9)
# _scaled_mm (cuBLASLt) wants both matrix dims of the weight to be multiples of 16.
_SCALED_MM_ALIGNMENT = 16


def fp8_matmul_available(device: torch.device) -> bool:
    """Whether `device` has FP8 matrix units that torch._scaled_mm can use."""
    if device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device) >= _FP8_UNITS_CAPABILITY


def fp8_weight_kernel_available(device: torch.device) -> bool:
    """Whether layers use the Triton weight-only FP8 kernel: CUDA with compute capability 8.9+
    (widening e4m3 in Triton). Not under Triton's CPU interpreter, even in tests: it computes
    bfloat16 dots wrongly (fp32 / fp16 are right), so the kernel's interpreter tests call it
    directly in those dtypes, and bf16 is checked on a GPU (bench/gpu_checks.py)."""
    return fp8_matmul_available(device)


def to_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale saturated to e4m3's range (the cast alone would overflow to NaN)."""
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] -> (fp8 [N, K], float32 scales [N]) with each row's max at FP8_MAX."""
    scales = weight.abs().amax(dim=1).float().clamp(min=_MIN_SCALE) / FP8_MAX  # [N]
    return to_fp8(weight, scales[:, None]), scales


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (fp8 [M, K], float32 scales [M, 1])."""
    scales = x.abs().amax(dim=1, keepdim=True).float().clamp(min=_MIN_SCALE) / FP8_MAX
    return to_fp8(x, scales), scales


def expand_block_scales(
    scales: torch.Tensor, block_size: tuple[int, int], shape: tuple[int, int]
) -> torch.Tensor:
    """Block scales [ceil(N / bn), ceil(K / bk)] -> one scale per element [N, K]."""
    block_n, block_k = block_size
    rows = scales.repeat_interleave(block_n, dim=0)[: shape[0]]
    return rows.repeat_interleave(block_k, dim=1)[:, : shape[1]]


def dequantize_blocks(
    weight: torch.Tensor, scales: torch.Tensor, block_size: tuple[int, int], dtype: torch.dtype
) -> torch.Tensor:
    """fp8 weight [N, K] with block scales -> float weight [N, K] in `dtype`."""
    expanded = expand_block_scales(scales.float(), block_size, tuple(weight.shape))
    return (weight.float() * expanded).to(dtype)


def requantize_blocks_per_channel(
    weight: torch.Tensor, scales: torch.Tensor, block_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-scaled fp8 -> per-channel fp8, for _scaled_mm's rowwise scaling (rounds twice)."""
    return quantize_per_channel(dequantize_blocks(weight, scales, block_size, torch.float32))


def scaled_mm_supports(weight: torch.Tensor) -> bool:
    return all(size % _SCALED_MM_ALIGNMENT == 0 for size in weight.shape)


def fp8_scaled_mm(
    x: torch.Tensor, weight: torch.Tensor, channel_scales: torch.Tensor
) -> torch.Tensor:
    """x [M, K] @ (weight [N, K] fp8 * channel_scales [N])^T on FP8 units -> [M, N] in x.dtype."""
    x_fp8, x_scales = quantize_per_token(x)
    y = torch._scaled_mm(
        x_fp8,
        weight.t(),  # [K, N] column-major, as cuBLASLt wants the second operand
        scale_a=x_scales,  # [M, 1]
        scale_b=channel_scales.float().view(1, -1),  # [1, N]
        out_dtype=torch.bfloat16,  # rowwise scaling produces bfloat16
    )
    return y.to(x.dtype)


def fp8_dequant_linear(
    x: torch.Tensor, weight: torch.Tensor, channel_scales: torch.Tensor
) -> torch.Tensor:
    """The fallback: x [M, K] @ W8^T [K, N] in x.dtype, then each column times its scale."""
    return F.linear(x, weight.to(x.dtype)) * channel_scales.to(x.dtype)
