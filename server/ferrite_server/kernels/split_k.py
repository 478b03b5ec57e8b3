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
    slice s of an fp32 [splits, M, N] buffer and `finish` adds the slices (deterministic: no
    atomics)."""

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

    def target(self, out: torch.Tensor) -> torch.Tensor:
        """Where the kernel writes: `out` itself, or the fp32 partial-sum buffer."""
        if self.splits == 1:
            return out
        return torch.empty(self.splits, *out.shape, dtype=torch.float32, device=out.device)

    def finish(self, target: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if target is not out:
            out.copy_(target.sum(dim=0))
        return out
