"""Sizing kernel launches for the device: its SM count, and how a small-M matmul splits K."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch


@functools.cache  # a device's SM count does not change
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 1 elsewhere (Triton's interpreter on CPU
    tensors has no parallelism to fill)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count



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
