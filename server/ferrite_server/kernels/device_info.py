"""Facts about the device a kernel launch sizes its grid for."""

from __future__ import annotations

import functools

import torch


@functools.cache  # a device's SM count does not change
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 1 elsewhere (Triton's interpreter on CPU
    tensors has no parallelism to fill)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


