"""Tile sweep of the decode-sized quantized matmul kernels at the Llama-3.1-8B layer shapes (GPU).

For each kernel (FP8 weight-only, GPTQ 4-bit with computed groups) and each tile configuration,
the summed median time over the four layer shapes (qkv, o, gate_up, down) at M rows, against
bf16 F.linear on the same shapes in the same run; the best configurations are printed and all
go to --output.

    python3 bench/quant_kernel_sweep.py [--rows 1,8] [--output FILE.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from ferrite_server.kernels.fp8_weight_matmul import Fp8MatmulTiles, fp8_weight_matmul  # noqa: E402
from ferrite_server.kernels.packed_int_matmul import (  # noqa: E402
    PackedMatmulTiles,
    packed_int_matmul,
)
from ferrite_server.layers.quantization.fp8_ops import quantize_per_channel  # noqa: E402
from ferrite_server.layers.quantization.packed_linear import PackedIntWeights  # noqa: E402

DEVICE = torch.device("cuda:0")
SHAPES = ((6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336))  # (N, K) of each layer
GROUP_SIZE = 128


def median_ms(run) -> float:  # type: ignore[no-untyped-def]
    return float(triton.testing.do_bench(run, warmup=25, rep=100, return_mode="median"))


def gptq_weights(out_features: int, in_features: int) -> PackedIntWeights:
    groups = in_features // GROUP_SIZE
    return PackedIntWeights(
        qweight=torch.randint(-(2**31), 2**31 - 1, (in_features // 8, out_features),
                              dtype=torch.int32, device=DEVICE),
        qzeros=torch.randint(-(2**31), 2**31 - 1, (groups, out_features // 8),
                             dtype=torch.int32, device=DEVICE),
        scales=(torch.rand(groups, out_features, device=DEVICE) * 0.01).half(),
        g_idx=(torch.arange(in_features, device=DEVICE) // GROUP_SIZE).int(),
        bits=4, layout="gptq", zero_offset=1, sequential_group_size=GROUP_SIZE,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", default="1,8")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    rows_list = [int(r) for r in args.rows.split(",")]
    bf16 = [torch.randn(n, k, device=DEVICE).bfloat16() for n, k in SHAPES]
    fp8 = [quantize_per_channel(w) for w in bf16]
    gptq = [gptq_weights(n, k) for n, k in SHAPES]
    grid = list(itertools.product((32, 64, 128), (64, 128, 256), (4, 8), (2, 4, 8)))
    results: dict = {"device": torch.cuda.get_device_name(DEVICE), "torch": torch.__version__,
                     "rows": {}}
    for rows in rows_list:
        xs = [torch.randn(rows, k, device=DEVICE).bfloat16() for _, k in SHAPES]
        base_ms = sum(median_ms(lambda x=x, w=w: F.linear(x, w)) for x, w in zip(xs, bf16))
        entry: dict = {"bf16_ms": base_ms, "fp8": [], "gptq": []}
        for block_n, block_k, warps, per_sm in grid:
            fp8_tiles = Fp8MatmulTiles(16, block_n, block_k, warps, None, per_sm)
            ms = sum(median_ms(lambda x=x, w=w: fp8_weight_matmul(x, w[0], w[1], fp8_tiles))
                     for x, w in zip(xs, fp8))
            entry["fp8"].append({"tiles": [block_n, block_k, warps, per_sm], "ms": ms})
            if GROUP_SIZE % block_k == 0:
                tiles = replace(PackedMatmulTiles(), block_n=block_n, block_k=block_k,
                                num_warps=warps, programs_per_sm=per_sm)
                ms = sum(median_ms(lambda x=x, w=w: packed_int_matmul(x, w, tiles))
                         for x, w in zip(xs, gptq))
                entry["gptq"].append({"tiles": [block_n, block_k, warps, per_sm], "ms": ms})
        results["rows"][rows] = entry
        print(f"M={rows}: bf16 F.linear {base_ms:.3f} ms over the four layers", flush=True)
        for kernel in ("fp8", "gptq"):
            ranked = sorted(entry[kernel], key=lambda item: item["ms"])
            default = next(item for item in entry[kernel]
                           if item["tiles"] == ([64, 128, 4, 4] if kernel == "fp8" else [64, 64, 4, 4]))
            print(f"  {kernel}: default {default['ms']:.3f} ms ({base_ms / default['ms']:.2f}x bf16); best:",
                  flush=True)
            for item in ranked[:4]:
                print(f"    tiles (block_n, block_k, warps, programs/SM) {item['tiles']}: "
                      f"{item['ms']:.3f} ms ({base_ms / item['ms']:.2f}x bf16)", flush=True)
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
