"""Facts about the device a kernel launch sizes its grid for."""

from __future__ import annotations

import functools
import math

import torch


@functools.cache  # a device's SM count does not change
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 1 elsewhere (Triton's interpreter on CPU
    tensors has no parallelism to fill)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def choose_split_k(num_tiles: int, num_k_tiles: int, sm_count: int, programs_per_sm: int) -> int:
    """Splits of K for a matmul whose output has `num_tiles` tiles: enough programs to fill
    the GPU (programs_per_sm on each SM), never more splits than K has tiles."""
    wanted = math.ceil(programs_per_sm * sm_count / max(1, num_tiles))
    return max(1, min(wanted, num_k_tiles))
