"""Fused RMSNorm (+ residual add): one launch per call instead of the ~8 elementwise kernels the
torch expression takes. On a GPU, eager decode at batch 1 is bound by kernel launches, not by
these few bytes (bench/RESULTS.md: ~1000 launches per 8B step), so fusing is what pays.

Numerics follow the torch reference in layers/norm.py step by step: the residual sum is rounded
to the model dtype (what `hidden + attended` stores), statistics are taken in float32 from that
rounded sum, the normalized row is rounded to the model dtype before the weight multiply.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(
    x_ptr,  # [T, hidden]
    residual_ptr,  # [T, hidden] (read only when HAS_RESIDUAL)
    weight_ptr,  # [hidden]
    out_ptr,  # [T, hidden]
    residual_out_ptr,  # [T, hidden] (written only when HAS_RESIDUAL)
    stride_x_token,
    stride_residual_token,
    stride_out_token,
    stride_residual_out_token,
    hidden_size,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < hidden_size
    row = tl.load(x_ptr + token * stride_x_token + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + token * stride_residual_token + cols, mask=mask, other=0.0)
        # Rounded to the model dtype once, exactly as the unfused `hidden + attended` would be.
        row = (row.to(tl.float32) + residual.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(residual_out_ptr + token * stride_residual_out_token + cols, row, mask=mask)
    row32 = row.to(tl.float32)
    variance = tl.sum(row32 * row32, axis=0) / hidden_size
    normalized = (row32 * (1.0 / tl.sqrt(variance + eps))).to(x_ptr.dtype.element_ty)
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0)
    out = normalized.to(tl.float32) * weight.to(tl.float32)
    tl.store(out_ptr + token * stride_out_token + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def _check_rows(name: str, tensor: torch.Tensor, like: torch.Tensor) -> None:
    if tensor.shape != like.shape or tensor.dtype != like.dtype:
        raise ValueError(
            f"{name} {tuple(tensor.shape)} {tensor.dtype} must match x {tuple(like.shape)} {like.dtype}"
        )
    if tensor.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous along the hidden dimension")


def _launch(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if x.dim() != 2 or weight.shape != (x.shape[1],):
        raise ValueError(f"x {tuple(x.shape)} must be [T, hidden] and weight [hidden], got {tuple(weight.shape)}")
    _check_rows("x", x, x)
    out = torch.empty_like(x)
    residual_out = torch.empty_like(x) if residual is not None else None
    if residual is not None:
        _check_rows("residual", residual, x)
    num_tokens, hidden_size = x.shape
    if num_tokens == 0:
        return out, residual_out
    block_n = triton.next_power_of_2(hidden_size)
    _rms_norm_kernel[(num_tokens,)](
        x,
        residual if residual is not None else x,
        weight,
        out,
        residual_out if residual_out is not None else out,
        x.stride(0),
        residual.stride(0) if residual is not None else 0,
        out.stride(0),
        residual_out.stride(0) if residual_out is not None else 0,
        hidden_size,
        eps,
        HAS_RESIDUAL=residual is not None,
        BLOCK_N=block_n,
        num_warps=max(1, min(16, block_n // 512)),
    )
    return out, residual_out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * x / sqrt(mean(x^2) + eps) per row: x [T, hidden] -> [T, hidden]."""
    out, _ = _launch(x, None, weight, eps)
    return out


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual) in one pass: x, residual [T, hidden]."""
    out, residual_out = _launch(x, residual, weight, eps)
    assert residual_out is not None
    return out, residual_out
