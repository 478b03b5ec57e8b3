"""Split-K for small-M matmuls (decode): K is cut over programs so a few output tiles still
fill the GPU. The host side plans the split and adds the partial sums; `store_tile` is the
kernels' shared epilogue."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ferrite_server.kernels.device_info import num_sms


@triton.jit
def store_tile(out_ptr, acc, rows, cols, M, N, stride_om, SPLIT_K: tl.constexpr):
    """Store an [BLOCK_M, BLOCK_N] fp32 accumulator: into the output, or with SPLIT_K > 1 into
    this program's split of the fp32 [SPLIT_K, M, N] partial-sum buffer."""
    offsets = rows[:, None].to(tl.int64) * stride_om + cols[None, :]
    if SPLIT_K > 1:
        offsets += tl.program_id(2).to(tl.int64) * M * stride_om
    tl.store(
        out_ptr + offsets,
        acc.to(out_ptr.dtype.element_ty),
        mask=(rows < M)[:, None] & (cols < N)[None, :],
    )


@dataclass(frozen=True)
class SplitK:
    """How a small-M matmul [M, K] x [K, N] splits K over programs (split-K).

    With one split the kernel writes the output; with more, split s writes its partial sums to
    slice s of an fp32 [splits, M, N] buffer and MatmulLaunch.finish adds the slices
    (deterministic: no atomics)."""

    splits: int
    k_per_split: int  # a multiple of the kernel's BLOCK_K

    @classmethod
    def plan(
        cls,
        num_inputs: int,
        block_k: int,
        num_output_tiles: int,
        device: torch.device,
        programs_per_sm: int,
        requested: int | None = None,
    ) -> SplitK:
        """`requested` splits, or enough programs to fill the GPU (programs_per_sm on each
        SM), never more than K has tiles, and never an empty split."""
        num_k_tiles = -(-num_inputs // block_k)
        wanted = math.ceil(programs_per_sm * num_sms(device) / max(1, num_output_tiles))
        splits = requested or max(1, min(wanted, num_k_tiles))
        k_per_split = -(-num_k_tiles // splits) * block_k
        return cls(splits=-(-num_inputs // k_per_split), k_per_split=k_per_split)


@dataclass(frozen=True)
class MatmulTiles:
    """Launch shape of a small-M matmul kernel."""

    block_m: int = 16
    block_n: int = 64
    block_k: int = 64
    num_warps: int = 4
    split_k: int | None = None  # None: SplitK.plan() fills the GPU
    programs_per_sm: int = 4  # programs wanted per SM before K stops being split further


@dataclass(frozen=True)
class MatmulLaunch:
    """Everything an [M, K] x [K, N] launch needs besides its operands."""

    out: torch.Tensor  # [M, N] in x's dtype
    target: torch.Tensor  # where the kernel writes: `out`, or the fp32 partial-sum buffer
    grid: tuple[int, int, int]  # (M tiles, N tiles, splits)
    split: SplitK

    @classmethod
    def plan(cls, x: torch.Tensor, num_cols: int, tiles: MatmulTiles) -> MatmulLaunch:
        num_rows, num_inputs = x.shape
        out = torch.empty(num_rows, num_cols, dtype=x.dtype, device=x.device)
        tiles_m, tiles_n = triton.cdiv(num_rows, tiles.block_m), triton.cdiv(num_cols, tiles.block_n)
        split = SplitK.plan(
            num_inputs, tiles.block_k, tiles_m * tiles_n, x.device, tiles.programs_per_sm,
            tiles.split_k,
        )
        target = out
        if split.splits > 1:
            target = torch.empty(split.splits, *out.shape, dtype=torch.float32, device=x.device)
        return cls(out, target, (tiles_m, tiles_n, split.splits), split)

    @property
    def empty(self) -> bool:
        return self.out.numel() == 0

    def finish(self) -> torch.Tensor:
        """The output, with the splits' partial sums added when K was split."""
        if self.target is not self.out:
            self.out.copy_(self.target.sum(dim=0))
        return self.out

