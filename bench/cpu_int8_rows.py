"""When the CPU int8 product should dequantize instead of running aten's weight-only kernel.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=server python bench/cpu_int8_rows.py [--rows 16,32,64,128]
        [--engine-batch-sizes 16,32,64]

Part 1, per product (2 torch threads, random weights, best of 3): the bundled model's int8 LM
head (49152 x 576) and two body shapes, at each row count: aten's `_weight_int8pack_mm`,
dequantize-then-matmul of the whole weight, and in slices of CPU_INT8_DEQUANT_SLICE_ROWS rows.
Part 2, through the Engine (bundled model, `--quantize int4`, whose LM head is int8): median
decode step at each batch size with the rule before this change (dequantize the whole weight
from 32 rows) and after (from CPU_INT8_DEQUANT_MIN_ROWS; a weight of more than CPU_INT8_DEQUANT_SLICE_ROWS rows in
slices, from CPU_INT8_SLICED_DEQUANT_MIN_ROWS), alternating twice.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from cpu_step_threads import decode_step_ms
from engine_decode import BLOCK_SIZE, PROMPT
from ferrite_server.config import ShardConfig
from ferrite_server.engine.engine import Engine
from ferrite_server.layers.quantization import weight_only_ops as ops
from ferrite_server.model_prep import ensure_default_model
from machine import cpu_model
from timing import best_ms

SHAPES = ((49152, 576), (3072, 576), (576, 1536))  # (N, K): LM head, gate_up, down
BEFORE_MIN_ROWS = 32  # the rule before: whole weight, from 32 rows


def whole_dequantized(product: ops.CpuInt8Linear, x: torch.Tensor) -> torch.Tensor:
    weight = ops.Int8Weight(product.codes, product.scales_f32)
    return F.linear(x, ops.dequantize_int8(weight, x.dtype))


def products(rows_list: list[int]) -> None:
    print("| N x K | rows | kernel ms | dequantize whole ms | dequantize in slices ms |")
    print("| --- | --- | --- | --- | --- |")
    for n, k in SHAPES:
        product = ops.CpuInt8Linear(ops.quantize_int8(torch.randn(n, k) * 0.02))
        for rows in rows_list:
            x = torch.randn(rows, k).bfloat16()
            kernel = best_ms(lambda: torch.ops.aten._weight_int8pack_mm(x, product.codes, product.scales))
            whole = best_ms(lambda: whole_dequantized(product, x))
            sliced = best_ms(lambda: product._dequantized_product(x))
            print(f"| {n} x {k} | {rows} | {kernel:.2f} | {whole:.2f} | {sliced:.2f} |", flush=True)


def engine_steps(batch_sizes: list[int]) -> None:
    model_dir = ensure_default_model(Path("~/.cache/ferrite/models").expanduser())
    prompt_ids = AutoTokenizer.from_pretrained(model_dir)(PROMPT)["input_ids"]
    engine = Engine.load(ShardConfig(
        model_id=model_dir, uds_path=Path("/tmp/unused.sock"), dtype="bfloat16",
        kv_cache_memory_bytes=1 << 30, block_size_tokens=BLOCK_SIZE, quantize="int4",
    ))
    engine.warmup(max_batch_prefill_tokens=2048, max_batch_size=max(batch_sizes),
                  max_total_tokens=1024)
    after = (ops.CPU_INT8_DEQUANT_MIN_ROWS, ops.CPU_INT8_DEQUANT_SLICE_ROWS,
             ops.CPU_INT8_SLICED_DEQUANT_MIN_ROWS)
    before = (BEFORE_MIN_ROWS, 1 << 30, BEFORE_MIN_ROWS)
    print("| batch | before: median step ms | after | before / after |")
    print("| --- | --- | --- | --- |")
    for batch_size in batch_sizes:
        times: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(2):
            for rule in ("before", "after"):
                (ops.CPU_INT8_DEQUANT_MIN_ROWS, ops.CPU_INT8_DEQUANT_SLICE_ROWS,
                 ops.CPU_INT8_SLICED_DEQUANT_MIN_ROWS) = before if rule == "before" else after
                times[rule] += decode_step_ms(engine, prompt_ids, batch_size, steps=6)
        old, new = statistics.median(times["before"]), statistics.median(times["after"])
        print(f"| {batch_size} | {old:.1f} | {new:.1f} | {old / new:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="16,32,64,128")
    parser.add_argument("--engine-batch-sizes", default="16,32,64,128")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    print(f"cpu: {cpu_model()}")
    products([int(r) for r in args.rows.split(",")])
    engine_steps([int(b) for b in args.engine_batch_sizes.split(",")])


if __name__ == "__main__":
    main()
