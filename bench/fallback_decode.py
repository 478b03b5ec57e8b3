"""Decode speed of the transformers fallback against the native model, same Llama checkpoint.

    PYTHONPATH=server python bench/fallback_decode.py [--model-dir DIR] [--dtype float32]
        [--batch-sizes 1,8] [--new-tokens 64] [--rounds 3]

Two engines in this process on the same weights (default: the bundled SmolLM2-135M, Llama
architecture): `--model-implementation native` (ferrite's model file) and `transformers` (the
transformers model with ferrite's paged attention, what any architecture without a file runs
on). For each batch size, B requests are prefilled in one step, then `--new-tokens` decode
steps run through Engine.step (no gRPC); decode tokens/s = B * steps / their wall time. The
engines alternate round by round so machine load hits both alike; the best round is reported.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch
from tokenizers import Tokenizer

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

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
BLOCK_SIZE = 16


def decode_round(engine: Engine, prompt_ids: list[int], batch: int, new_tokens: int) -> float:
    """Decode tokens/s of `batch` requests decoding together."""
    blocks_per_request = -(-(len(prompt_ids) + new_tokens + 1) // BLOCK_SIZE)
    params = RequestParams(stopping=StoppingParams(max_new_tokens=new_tokens + 1, ignore_eos=True))
    prompt = tuple(prompt_ids)
    new_requests = tuple(
        NewRequest(
            rid, prompt, len(prompt), 0, len(prompt),
            tuple(range(rid * blocks_per_request, (rid + 1) * blocks_per_request)), params,
        )
        for rid in range(batch)
    )
    output = engine.step(StepInput(new_requests=new_requests))
    start = time.perf_counter()
    for _ in range(new_tokens):
        last = {g.request_id: g.tokens[-1].token_id for g in output.generations}
        running = tuple(RunningRequest(rid, (last[rid],), (), 1) for rid in range(batch))
        output = engine.step(StepInput(running_requests=running))
    elapsed = time.perf_counter() - start
    engine.clear()
    return batch * new_tokens / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--dtype", default="float32", choices=["bfloat16", "float32"])
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    model_dir = args.model_dir or ensure_default_model(Path("~/.cache/ferrite/models").expanduser())
    prompt_ids = Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(PROMPT).ids
    base = ShardConfig(
        model_id=model_dir, uds_path=Path("/tmp/unused.sock"), dtype=args.dtype,
        kv_cache_memory_bytes=256 << 20, block_size_tokens=BLOCK_SIZE,
    )
    engines = {}
    for implementation in ("native", "transformers"):
        engine = Engine.load(replace(base, model_implementation=implementation))
        engine.warmup(max_batch_prefill_tokens=512, max_batch_size=max(batch_sizes),
                      max_total_tokens=len(prompt_ids) + args.new_tokens + 16)
        assert engine.info().model_implementation == implementation
        engines[implementation] = engine
    print(f"model {model_dir.name}, {args.dtype}, prompt {len(prompt_ids)} tokens, "
          f"{args.new_tokens} decode steps, torch threads {torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}")
    print("| batch | native tok/s | transformers fallback tok/s | fallback / native |")
    print("| --- | --- | --- | --- |")
    for batch in batch_sizes:
        rounds: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(args.rounds):
            for name, engine in engines.items():
                rounds[name].append(decode_round(engine, prompt_ids, batch, args.new_tokens))
        native, fallback = max(rounds["native"]), max(rounds["transformers"])
        print(f"| {batch} | {native:.1f} | {fallback:.1f} | {fallback / native:.2f} |")


if __name__ == "__main__":
    main()
