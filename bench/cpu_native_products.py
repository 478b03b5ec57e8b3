"""The native decode step's weight products against aten's, one to four rows (CPU).

    PYTHONPATH=server python bench/cpu_native_products.py [--threads 1] [--rows 1]

For the bundled SmolLM2-135M's shapes (the LM head 49152 x 576, gate_up 3072 x 576, down
576 x 1536): aten's kernel the Python layers call (`linear` for bfloat16,
`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`) and the native Linear of
kernels/cpu/decoder_stack.cpp on the same weights, median of 50 calls each, alternating; GB/s
counts the weight bytes read once per call (small weights stay in the caches between calls,
so their figures are cache speed, not memory speed).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ferrite_server.config import ShardConfig
from ferrite_server.kernels.cpu.build import load_decoder_stack
from ferrite_server.layers.quantization.weight_only_ops import (
    CpuInt4Linear,
    CpuInt8Linear,
    quantize_int4,
    quantize_int8,
)
from ferrite_server.models.native_decode import _NativeKinds

SHAPES = ((49152, 576), (3072, 576), (576, 1536))


def median_ms(calls: dict[str, Callable[[], object]], repeats: int = 50) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kinds = _NativeKinds.of(load_decoder_stack(Path(ShardConfig.native_kernel_dir)))
    native = kinds.native
    print(f"threads {args.threads}, rows {args.rows}, int4 layout read natively: "
          f"{kinds.int4 == native.INT4_BLOCKED64}\n")
    print("| shape (N x K) | weights | aten ms (GB/s) | native ms (GB/s) |")
    print("| --- | --- | --- | --- |")
    for n, k in SHAPES:
        weight = torch.randn(n, k) * 0.02
        x = torch.randn(args.rows, k).to(torch.bfloat16)
        dense = weight.to(torch.bfloat16)
        int8 = CpuInt8Linear(quantize_int8(weight))
        int4 = CpuInt4Linear(quantize_int4(weight, 32))
        cases = {
            "bf16": (2 * n * k, lambda: torch.nn.functional.linear(x, dense),
                     native.Linear(native.DENSE, dense, None, 0, None)),
            "int8": (n * k, lambda: int8(x), native.Linear(native.INT8, int8.codes, int8.scales, 0, None)),
            "int4": (n * k // 2 + n * k // 32 * 4, lambda: int4(x),
                     native.Linear(kinds.int4, int4.packed, int4.scales_and_zeros, 32, None)),
        }
        for name, (weight_bytes, aten_call, native_linear) in cases.items():
            ms = median_ms({"aten": aten_call, "native": lambda: native_linear(x)})
            rates = {key: weight_bytes / value / 1e6 for key, value in ms.items()}
            print(f"| {n} x {k} | {name} | {ms['aten']:.3f} ({rates['aten']:.1f}) | "
                  f"{ms['native']:.3f} ({rates['native']:.1f}) |")


if __name__ == "__main__":
    main()
