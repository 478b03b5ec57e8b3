"""What the host CPU can do natively (read once from /proc/cpuinfo on Linux)."""

from __future__ import annotations

import functools
from pathlib import Path

# x86 feature flags for bf16 arithmetic in hardware: AVX-512 BF16 and AMX tiles.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo_text: str) -> frozenset[str]:
    """The feature flags of the first processor listed ("flags" on x86, "Features" on Arm)."""
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache  # a fact about the machine: read once per process
def cpu_has_native_bfloat16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = cpu_flags(text)
    # Arm: SVE/NEON bf16 instructions are flagged "bf16".
    return bool(flags & NATIVE_BF16_FLAGS) or "bf16" in flags
