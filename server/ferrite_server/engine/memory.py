"""How many bytes the KV cache gets.

CUDA: everything the process needs besides the KV cache is measured, not guessed: weights and
the CUDA context show up in the device's used memory once the warmup's activations are freed,
and the warmup forward's peak (activations, logits, sampling) is added back, so a "successful"
warmup cannot be followed by an out-of-memory error at full load. The share of the GPU ferrite
may use in total is the shard's cuda_memory_fraction (TGI's --cuda-memory-fraction, default
0.9). An explicit kv_cache_memory_bytes caps the result (the engine applies it).

CPU: there is no device to measure; the KV cache takes the configured bytes, or by default
1 GiB capped at a quarter of the memory the system has available.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import torch

CPU_DEFAULT_KV_CACHE_BYTES = 1 << 30
CPU_MAX_SHARE_OF_AVAILABLE = 0.25

T = TypeVar("T")


def cpu_available_bytes() -> int:
    """MemAvailable from /proc/meminfo (free plus reclaimable), else free physical pages."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def cpu_kv_cache_bytes(configured_bytes: int | None) -> int:
    if configured_bytes is not None:
        return configured_bytes
    return min(CPU_DEFAULT_KV_CACHE_BYTES, int(cpu_available_bytes() * CPU_MAX_SHARE_OF_AVAILABLE))


def measure_peak_activation_bytes(run: Callable[[], T], device: torch.device) -> tuple[T, int]:
    """Run `run` and return its result with the device memory it needed beyond what was held."""
    if device.type != "cuda":
        return run(), 0
    torch.cuda.synchronize(device)
    held_bytes = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = run()
    torch.cuda.synchronize(device)
    return result, torch.cuda.max_memory_allocated(device) - held_bytes


def cuda_kv_cache_bytes(
    device: torch.device, peak_activation_bytes: int, memory_fraction: float
) -> int:
    """Bytes left for KV within memory_fraction of the GPU after weights, context and
    activations."""
    torch.cuda.empty_cache()
    free_bytes, total_bytes = torch.cuda.mem_get_info(device)
    return kv_budget_bytes(total_bytes, free_bytes, peak_activation_bytes, memory_fraction)


def kv_budget_bytes(
    total_bytes: int, free_bytes: int, peak_activation_bytes: int, memory_fraction: float
) -> int:
    used_bytes = total_bytes - free_bytes  # weights, CUDA context, other processes
    return int(total_bytes * memory_fraction) - used_bytes - peak_activation_bytes


def model_memory_bytes(module: torch.nn.Module) -> int:
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def anonymous_resident_bytes() -> int:
    """This process's anonymous resident memory (RssAnon: heap, tensors on CPU; not mapped
    files such as an open safetensors checkpoint), or 0 where /proc does not say."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
