"""aten's CPU int4 product (`CpuInt4Linear`) over one decode step's worth of weights, by rows
and torch threads: what a step pays in products alone, and what a second thread buys.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=server python bench/cpu_int4_threads.py
    GOMP_SPINCOUNT=10000 PYTHONPATH=server python bench/cpu_int4_threads.py   # spinning threads

The bundled model's shapes (30 layers of qkv 960x576, o 576x576, gate_up 3072x576, down
576x1536; random weights, groups of 32, all distinct so they stream from memory), bfloat16
activations of `--rows` rows; best of 3 passes over all 120 products per setting. The OpenMP
wait policy is read when torch loads: run the script once per policy.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from ferrite_server.layers.quantization.weight_only_ops import CpuInt4Linear, quantize_int4
from machine import cpu_model

LAYERS = 30
SHAPES = ((960, 576), (576, 576), (3072, 576), (576, 1536))  # (N, K) per layer
GROUP_SIZE = 32
PASSES = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,4,16")
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    torch.manual_seed(0)
    products = [
        CpuInt4Linear(quantize_int4(torch.randn(n, k) * 0.02, GROUP_SIZE))
        for _ in range(LAYERS)
        for n, k in SHAPES
    ]
    weight_bytes = sum(n * k for n, k in SHAPES) * LAYERS * 20 // 32  # 4-bit codes + 2 bf16 per group
    policy = os.environ.get("OMP_WAIT_POLICY") or f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', 'unset')}"
    print(f"cpu: {cpu_model()}")
    print(f"wait policy: {policy}; {len(products)} products, {weight_bytes / 1e6:.0f} MB of weights")
    print("| rows | threads | all products, ms (best of 3) | GB/s |")
    print("| --- | --- | --- | --- |")
    for rows in (int(r) for r in args.rows.split(",")):
        inputs = {k: torch.randn(rows, k).bfloat16() for _, k in SHAPES}
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            best_s = float("inf")
            for _ in range(PASSES):
                start = time.perf_counter()
                for index, product in enumerate(products):
                    product(inputs[SHAPES[index % len(SHAPES)][1]])
                best_s = min(best_s, time.perf_counter() - start)
            print(f"| {rows} | {threads} | {best_s * 1e3:.2f} | {weight_bytes / best_s / 1e9:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
