"""The `sweep` section of bench/gpu_kernels.py: launch shapes of both attention kernels.

Not in the default run (`--sections ...,sweep`): it is how the defaults in DecodeTiles and
VarlenTiles were chosen, and re-checks them on another GPU. Best three of each kind go into
the table, every measurement into the JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, Callable

import torch
from gpu_kernel_cases import (
    BenchSizes,
    Kernels,
    Row,
    bench_ms,
    causal_flops,
    decode_graph_ms,
    decode_lens,
    kv_bytes_read,
    make_batch,
)

# (block_n, num_warps, num_stages, partition_size_tokens, programs_per_sm)
DecodeShape = tuple[int, int, int, int | None, int]
# (program_rows, block_n, num_warps, num_stages): the best shapes of a wider earlier sweep
PrefillShape = tuple[int, int, int, int]
PREFILL_SHAPES: tuple[PrefillShape, ...] = (
    (128, 32, 4, 3),
    (128, 128, 8, 3),
    (128, 64, 4, 3),
    (64, 32, 4, 2),
    (128, 64, 8, 2),
    (128, 32, 4, 4),
)


def section_sweep(
    kernels: Kernels, sizes: BenchSizes, results: dict[str, Any], rows: list[Row]
) -> None:
    results["sweep"] = {"decode": [], "prefill": []}
    _sweep_decode_shapes(kernels, sizes, results["sweep"]["decode"])
    if sizes.device == "cuda":
        _sweep_small_decode_partitions(kernels, sizes, results["sweep"]["decode"])
    _sweep_prefill_shapes(kernels, sizes, results["sweep"]["prefill"])
    for kind, metric in (("decode", "gbs"), ("prefill", "tflops")):
        ranked = sorted(
            results["sweep"][kind], key=lambda r: -r[metric] if r[metric] == r[metric] else 0
        )
        for entry in ranked[:3]:
            shape = "/".join(
                str(value) for key, value in entry.items() if key not in ("ms", metric)
            )
            rows.append(
                Row(
                    "sweep", f"{kind} {shape}", metric, entry[metric], f"{entry['ms'] * 1e3:.0f} us"
                )
            )


def _decode_shapes(sizes: BenchSizes) -> list[DecodeShape]:
    if sizes.device != "cuda":
        return [(64, 4, 2, None, 8), (32, 2, 1, 64, 8)]
    return [
        (n, w, st, None, pps)
        for n in (32, 64)
        for w in (2, 4)
        for st in (2, 3)
        for pps in (2, 8, 16)
    ]


def _sweep_decode_shapes(
    kernels: Kernels, sizes: BenchSizes, entries: list[dict[str, Any]]
) -> None:
    """Eager timing of the largest and smallest decode batch over tile shapes."""
    dtype = sizes.timing_dtype
    for batch, context in (sizes.decode_configs[0], sizes.decode_configs[-1]):
        inputs = make_batch(kernels, sizes, dtype, decode_lens(batch, context))
        out = torch.empty_like(inputs.query)
        kv_bytes = kv_bytes_read(sizes, batch, context, dtype)
        for shape in _decode_shapes(sizes):
            tiles = kernels.decode_tiles(*shape)
            ms = _try_bench(lambda: kernels.decode(inputs, out, tiles), sizes.device)
            entry = {"batch": batch, "context": context, **asdict(tiles), "ms": ms}
            entries.append({**entry, "gbs": kv_bytes / ms / 1e6})
        del inputs, out


def _sweep_small_decode_partitions(
    kernels: Kernels, sizes: BenchSizes, entries: list[dict[str, Any]]
) -> None:
    """Small batches are latency-bound: partition size vs CUDA-graph time."""
    for batch, context in ((1, 4096), (4, 4096), (1, 32768)):
        kv_bytes = kv_bytes_read(sizes, batch, context, sizes.timing_dtype)
        for partition in (None, 64, 128, 256, 512, 1024, 4096):
            tiles = kernels.decode_tiles(partition_size_tokens=partition)
            try:
                ms = decode_graph_ms(kernels, sizes, batch, context, tiles)
            except Exception as error:  # noqa: BLE001 - record and go on
                print(f"sweep: skipped ({error!r})"[:160])
                ms = math.nan
            entry = {"batch": batch, "context": context, "graph": True, **asdict(tiles), "ms": ms}
            entries.append({**entry, "gbs": kv_bytes / ms / 1e6})


def _sweep_prefill_shapes(
    kernels: Kernels, sizes: BenchSizes, entries: list[dict[str, Any]]
) -> None:
    shapes = PREFILL_SHAPES if sizes.device == "cuda" else PREFILL_SHAPES[:1] + ((64, 32, 4, 1),)
    for lens in sizes.prefill_configs:
        inputs = make_batch(kernels, sizes, sizes.timing_dtype, lens)
        out = torch.empty_like(inputs.query)
        flops = causal_flops(lens, sizes.num_heads, sizes.head_dim)
        for shape in shapes:
            tiles = kernels.varlen_tiles(*shape)
            ms = _try_bench(lambda: kernels.varlen(inputs, out, tiles), sizes.device)
            entry = {
                "seqs": len(lens[0]),
                "q": lens[0][0],
                "ctx": lens[1][0],
                **asdict(tiles),
                "ms": ms,
            }
            entries.append({**entry, "tflops": flops / ms / 1e9})


def _try_bench(fn: Callable[[], Any], device: str) -> float:
    """Milliseconds, or NaN for a launch shape that does not compile / fit."""
    try:
        return bench_ms(fn, device)
    except Exception as error:  # noqa: BLE001 - e.g. out of shared memory: skip this shape
        print(f"sweep: skipped ({type(error).__name__}: {str(error)[:100]})")
        return math.nan
