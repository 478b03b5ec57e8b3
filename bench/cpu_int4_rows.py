"""When the CPU int4 product should unpack its weight and multiply densely instead of running
aten's int4 kernel on every row (prefill steps).

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=server python bench/cpu_int4_rows.py
        [--rows 512,1152,2048,4096] [--prefill-tokens 1024,4096]

Part 1, per product (all torch threads, random weights, group 32, best of 3): the bundled
model's int4 body shapes at each row count: the kernel on the rows, a dense bfloat16 matmul
with the weight already unpacked, and the unpacking alone (the kernel times the identity).
Part 2, through the Engine (bundled model, bfloat16, `--quantize int4`): one prefill step of
that many prompt tokens (prompts of 512 tokens), the kernel on every row (before) against the
rule CPU_INT4_DENSE_MIN_ROWS_PER_INPUT (after), alternating twice, best of each.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from engine_decode import BLOCK_SIZE, PROMPT
from ferrite_server.config import ShardConfig
from ferrite_server.engine.engine import Engine
from ferrite_server.engine.types import NewRequest, RequestParams, StepInput, StoppingParams
from ferrite_server.layers.quantization import weight_only_ops as ops
from ferrite_server.model_prep import ensure_default_model
from machine import cpu_model
from timing import best_ms

SHAPES = ((1536, 576), (576, 1536), (576, 576), (192, 576))  # (N, K): gate / up, down, q / o, k / v
GROUP_SIZE = 32
PROMPT_TOKENS = 512
DENSE_RULE = ops.CPU_INT4_DENSE_MIN_ROWS_PER_INPUT


def parse_ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def products(rows_list: list[int]) -> None:
    print("| N x K | rows | kernel ms | dense ms (unpacked) | unpacking ms | kernel / (dense + unpacking) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n, k in SHAPES:
        product = ops.CpuInt4Linear(ops.quantize_int4(torch.randn(n, k) * 0.02, GROUP_SIZE))
        unpacked = product._unpacked_transposed(k)
        for rows in rows_list:
            x = torch.randn(rows, k).bfloat16()
            kernel = best_ms(lambda: product._kernel(x))
            dense = best_ms(lambda: torch.mm(x, unpacked))
            unpacking = best_ms(lambda: product._unpacked_transposed(k))
            print(f"| {n} x {k} | {rows} | {kernel:.2f} | {dense:.2f} | {unpacking:.2f} | "
                  f"{kernel / (dense + unpacking):.2f} |", flush=True)
        assert (F.linear(x.float(), unpacked.t().float()) - product._kernel(x).float()).abs().max() < 0.1


def prefill_ms(engine: Engine, prompt_ids: list[int], tokens: int) -> float:
    prompt = tuple((prompt_ids * (PROMPT_TOKENS // len(prompt_ids) + 1))[:PROMPT_TOKENS])
    blocks_each = -(-(PROMPT_TOKENS + 1) // BLOCK_SIZE)
    params = RequestParams(stopping=StoppingParams(max_new_tokens=1, ignore_eos=True))
    news = tuple(
        NewRequest(i, prompt, PROMPT_TOKENS, 0, PROMPT_TOKENS,
                   tuple(range(i * blocks_each, (i + 1) * blocks_each)), params)
        for i in range(tokens // PROMPT_TOKENS)
    )
    start = time.perf_counter()
    engine.step(StepInput(new_requests=news))
    elapsed_ms = (time.perf_counter() - start) * 1e3
    engine.clear()
    return elapsed_ms


def prefill_steps(token_counts: list[int]) -> None:
    model_dir = ensure_default_model(Path("~/.cache/ferrite/models").expanduser())
    prompt_ids = AutoTokenizer.from_pretrained(model_dir)(PROMPT)["input_ids"]
    engine = Engine.load(ShardConfig(
        model_id=model_dir, uds_path=Path("/tmp/unused.sock"), dtype="bfloat16",
        kv_cache_memory_bytes=1 << 30, block_size_tokens=BLOCK_SIZE, quantize="int4",
    ))
    engine.warmup(max_batch_prefill_tokens=max(token_counts), max_batch_size=64,
                  max_total_tokens=PROMPT_TOKENS + 16)
    print("| prefill tokens | kernel on every row: best step ms | dense from 2K rows | before / after |")
    print("| --- | --- | --- | --- |")
    for tokens in token_counts:
        times: dict[int, list[float]] = {1 << 30: [], DENSE_RULE: []}
        for _ in range(2):
            for rule in times:
                ops.CPU_INT4_DENSE_MIN_ROWS_PER_INPUT = rule
                times[rule].append(prefill_ms(engine, prompt_ids, tokens))
        before, after = min(times[1 << 30]), min(times[DENSE_RULE])
        print(f"| {tokens} | {before:.0f} | {after:.0f} | {before / after:.2f} |", flush=True)
    ops.CPU_INT4_DENSE_MIN_ROWS_PER_INPUT = DENSE_RULE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=parse_ints, default=parse_ints("512,1152,2048,4096"))
    parser.add_argument("--prefill-tokens", type=parse_ints, default=parse_ints("1024,4096"))
    args = parser.parse_args()
    print(f"cpu: {cpu_model()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    products(args.rows)
    prefill_steps(args.prefill_tokens)


if __name__ == "__main__":
    main()
