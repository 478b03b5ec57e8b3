"""Decode step time of 16 grammar-constrained requests against 16 unconstrained ones, one engine
driven through Engine.step (no gRPC): the per-token cost of structured output.

    PYTHONPATH=server python bench/grammar_decode.py [--model-dir DIR] [--dtype float32]
        [--requests 16] [--steps 24] [--rounds 3] [--threads N]

The constrained requests follow a JSON schema whose one string field can run long (so every
request stays in the batch for the measured steps): each step computes one allowed-token mask
per request on the host, copies the bitmask and applies it in the sampler. Rounds alternate the
two batches, so machine load hits both alike; the median step of each round is reported, and
the grammar's cold and cached compile times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from ferrite_server.config import ShardConfig
from ferrite_server.engine.engine import Engine
from ferrite_server.engine.types import (
    Grammar,
    NewRequest,
    RequestParams,
    RunningRequest,
    SamplingParams,
    StepInput,
    StoppingParams,
)
from ferrite_server.model_prep import ensure_default_model
from machine import cpu_model

BLOCK_SIZE = 16
PROMPT_TOKENS = 32
SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string", "maxLength": 40}, "story": {"type": "string"}},
    "required": ["title", "story"],
    "additionalProperties": False,
}
GRAMMAR = Grammar(kind="json", value=json.dumps(SCHEMA))


def decode_round(engine: Engine, grammar: Grammar | None, num_requests: int, steps: int) -> tuple[float, int]:
    """(median decode step in ms, steps measured) of `num_requests` requests after one prefill;
    stops early when a request leaves the batch (a finished JSON value), so every measured step
    has the whole batch."""
    blocks_per_request = -(-(PROMPT_TOKENS + steps + 2) // BLOCK_SIZE)
    new_requests = []
    for index in range(num_requests):
        table = tuple(range(index * blocks_per_request, (index + 1) * blocks_per_request))
        prompt = tuple(100 + (index * 13 + position * 7) % 5000 for position in range(PROMPT_TOKENS))
        params = RequestParams(sampling=SamplingParams(grammar=grammar),
                               stopping=StoppingParams(max_new_tokens=steps + 2))
        new_requests.append(NewRequest(index, prompt, PROMPT_TOKENS, 0, PROMPT_TOKENS, table, params))
    output = engine.step(StepInput(new_requests=tuple(new_requests)))
    step_s = []
    for _ in range(steps):
        if len(output.generations) < num_requests or any(g.error or not g.tokens for g in output.generations):
            break
        running = tuple(RunningRequest(g.request_id, (g.tokens[-1].token_id,), (), 1) for g in output.generations)
        start = time.perf_counter()
        output = engine.step(StepInput(running_requests=running))
        step_s.append(time.perf_counter() - start)
        if any(g.finish_reason.value for g in output.generations):
            break
    engine.clear()
    return statistics.median(step_s) * 1e3, len(step_s)


def compile_times_ms(engine: Engine) -> tuple[float, float]:
    """Cold compile of a fresh schema (a new maxLength keeps it out of the cache), then cached."""
    compiler = engine.grammars
    assert compiler is not None
    fresh = Grammar(kind="json", value=json.dumps({**SCHEMA, "properties": {
        **SCHEMA["properties"], "title": {"type": "string", "maxLength": 41}}}))
    start = time.perf_counter()
    compiler.compile(fresh)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    compiler.compile(fresh)
    return cold * 1e3, (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--dtype", default="float32", choices=["bfloat16", "float32"])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = args.model_dir or ensure_default_model(Path("~/.cache/ferrite/models").expanduser())
    config = ShardConfig(model_id=model_dir, uds_path=Path("/tmp/unused.sock"), dtype=args.dtype,
                         kv_cache_memory_bytes=512 << 20, block_size_tokens=BLOCK_SIZE)
    engine = Engine.load(config)
    engine.warmup(max_batch_prefill_tokens=1024, max_batch_size=args.requests, max_total_tokens=256)
    cold_ms, cached_ms = compile_times_ms(engine)
    rounds: dict[str, list[tuple[float, int]]] = {"unconstrained": [], "json_schema": []}
    for _ in range(args.rounds):
        rounds["unconstrained"].append(decode_round(engine, None, args.requests, args.steps))
        rounds["json_schema"].append(decode_round(engine, GRAMMAR, args.requests, args.steps))
    print(f"model {model_dir.name}, {args.dtype}, {args.requests} requests, prompt {PROMPT_TOKENS} "
          f"tokens, up to {args.steps} decode steps, torch threads {torch.get_num_threads()}")
    print(f"cpu: {cpu_model()}")
    print(f"grammar compile: cold {cold_ms:.1f} ms, cached {cached_ms:.3f} ms")
    base = min(ms for ms, _ in rounds["unconstrained"])
    for name, samples in rounds.items():
        listed = ", ".join(f"{ms:.1f} ({steps} steps)" for ms, steps in samples)
        best = min(ms for ms, _ in samples)
        print(f"{name:14s} median decode step {best:7.1f} ms ({best / base:.2f}x; rounds: {listed})")
    # Rounds alternate the two batches, so a round's pair shares the machine's load.
    ratios = [c / u for (u, _), (c, _) in zip(rounds["unconstrained"], rounds["json_schema"], strict=True)]
    print(f"json_schema / unconstrained per round: {', '.join(f'{r:.2f}' for r in ratios)}; "
          f"median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
