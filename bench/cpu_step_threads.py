"""CPU decode step time by batch size: the forward on one torch thread against all of them.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=server python bench/cpu_step_threads.py
        [--quantize int4] [--dtype bfloat16] [--batch-sizes 1,4,8,12,16] [--steps 12]

Through the Engine in this process (no gRPC), the bundled model: per batch size, that many
requests are prefilled, then `--steps` decode steps run with every step's forward on one thread
(`--cpu-single-thread-max-rows` above the batch) and as many with all threads (0), alternating
twice; the LM head and sampling run on all threads either way. Prints the median step time of
each: where one thread stops paying is the shard's `--cpu-single-thread-max-rows`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from transformers import AutoTokenizer

from engine_decode import BLOCK_SIZE, PROMPT
from ferrite_server.config import ShardConfig
from ferrite_server.engine.engine import Engine
from ferrite_server.engine.types import (
    NewRequest,
    RequestParams,
    RunningRequest,
    StepInput,
    StoppingParams,
)
from ferrite_server.model_prep import ensure_default_model
from machine import cpu_model

ROUNDS = 2


def decode_step_ms(engine: Engine, prompt_ids: list[int], batch_size: int, steps: int) -> list[float]:
    """Prefill `batch_size` copies of the prompt, then time `steps` decode steps of all of them."""
    blocks_each = -(-(len(prompt_ids) + steps + 2) // BLOCK_SIZE)
    params = RequestParams(stopping=StoppingParams(max_new_tokens=steps + 2, ignore_eos=True))
    prompt = tuple(prompt_ids)
    news = tuple(
        NewRequest(i, prompt, len(prompt), 0, len(prompt),
                   tuple(range(i * blocks_each, (i + 1) * blocks_each)), params)
        for i in range(batch_size)
    )
    output = engine.step(StepInput(new_requests=news))
    times_ms = []
    for _ in range(steps):
        last = {g.request_id: g.tokens[-1].token_id for g in output.generations}
        running = tuple(RunningRequest(i, (last[i],), (), 1) for i in range(batch_size))
        start = time.perf_counter()
        output = engine.step(StepInput(running_requests=running))
        times_ms.append((time.perf_counter() - start) * 1e3)
    engine.clear()
    return times_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantize", default="int4")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch-sizes", default="1,4,8,12,16")
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    model_dir = ensure_default_model(Path("~/.cache/ferrite/models").expanduser())
    prompt_ids = AutoTokenizer.from_pretrained(model_dir)(PROMPT)["input_ids"]
    quantize = None if args.quantize == "none" else args.quantize
    config = ShardConfig(
        model_id=model_dir, uds_path=Path("/tmp/unused.sock"), dtype=args.dtype,
        kv_cache_memory_bytes=512 << 20, block_size_tokens=BLOCK_SIZE, quantize=quantize,
    )
    engine = Engine.load(config)
    engine.warmup(max_batch_prefill_tokens=512, max_batch_size=max(batch_sizes),
                  max_total_tokens=1024)
    step_threads = engine._step_threads  # benchmark only: the policy under test
    assert step_threads is not None, "a CPU engine"
    print(f"cpu: {cpu_model()}")
    print(f"{args.dtype}, --quantize {args.quantize}, torch threads {step_threads.all_threads}, "
          f"{args.steps} decode steps per batch size and setting, {ROUNDS} rounds")
    print("| batch | forward on 1 thread: median step ms | on all threads | all / one |")
    print("| --- | --- | --- | --- |")
    for batch_size in batch_sizes:
        times: dict[int, list[float]] = {0: [], 1: []}
        for _ in range(ROUNDS):
            for one_thread in (1, 0):
                step_threads.single_thread_max_rows = batch_size if one_thread else 0
                times[one_thread] += decode_step_ms(engine, prompt_ids, batch_size, args.steps)
        one, every = statistics.median(times[1]), statistics.median(times[0])
        print(f"| {batch_size} | {one:.2f} | {every:.2f} | {every / one:.2f} |", flush=True)


if __name__ == "__main__":
    main()
