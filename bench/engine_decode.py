"""Batch-1 decode speed of ferrite's Engine against transformers `generate`, same weights.

    PYTHONPATH=server python bench/engine_decode.py [--model-dir DIR] [--dtype bfloat16]
        [--new-tokens 100] [--rounds 3] [--threads N] [--quantize int4 [--lm-head-bits 4]]
        [--single-thread-max-rows 8]

Both run in this process, alternating round by round so machine load hits both alike. Engine:
one prefill step, then `--new-tokens` decode steps driven through Engine.step (no gRPC);
decode tokens/s = decode steps / their wall time. transformers: greedy generate of 1 and of
N+1 tokens (EOS suppressed); decode tokens/s = N / (time(N+1) - time(1)). Reports the best
round of each (the least disturbed by other processes). `--quantize` applies to the Engine
only (transformers runs the float weights); `--lm-head-bits` (8, 4 or none) replaces the int8
LM head of `--quantize int8 / int4` for this run (layers/quantization/weight_only.py).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

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


def engine_round(engine: Engine, prompt_ids: list[int], new_tokens: int) -> dict[str, float]:
    num_blocks = -(-(len(prompt_ids) + new_tokens + 1) // BLOCK_SIZE)
    table = tuple(range(num_blocks))
    params = RequestParams(stopping=StoppingParams(max_new_tokens=new_tokens + 1, ignore_eos=True))
    prompt = tuple(prompt_ids)
    new = NewRequest(1, prompt, len(prompt), 0, len(prompt), table, params)
    output = engine.step(StepInput(new_requests=(new,)))
    step_s, forward_s, sampling_s, bookkeeping_s = [], [], [], []
    start = time.perf_counter()
    for _ in range(new_tokens):
        # As the router sends it: the token sampled last, no new blocks (the table covers all).
        last_token = output.generations[0].tokens[-1].token_id
        step_start = time.perf_counter()
        output = engine.step(StepInput(running_requests=(RunningRequest(1, (last_token,), (), 1),)))
        step_s.append(time.perf_counter() - step_start)
        timings = output.timings
        forward_s.append(timings.forward_ns / 1e9)
        sampling_s.append(timings.sampling_ns / 1e9)
        bookkeeping_s.append((timings.total_ns - timings.forward_ns - timings.sampling_ns) / 1e9)
    elapsed = time.perf_counter() - start
    engine.clear()
    return {
        "tokens_per_s": new_tokens / elapsed,
        "step_ms": statistics.median(step_s) * 1e3,
        "forward_ms": statistics.median(forward_s) * 1e3,
        "logits_sampling_ms": statistics.median(sampling_s) * 1e3,
        "bookkeeping_ms": statistics.median(bookkeeping_s) * 1e3,
    }


def transformers_round(model: torch.nn.Module, prompt_ids: list[int], new_tokens: int) -> float:
    input_ids = torch.tensor([prompt_ids])

    def timed_generate(num_tokens: int) -> float:
        start = time.perf_counter()
        model.generate(  # type: ignore[operator]
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=num_tokens,
            min_new_tokens=num_tokens,
            do_sample=False,
        )
        return time.perf_counter() - start

    with torch.inference_mode():
        prefill_s = timed_generate(1)
        total_s = timed_generate(new_tokens + 1)
    return new_tokens / (total_s - prefill_s)


def patch_lm_head_bits(bits: str) -> None:
    """Benchmark only: on-the-fly int8 / int4 with another LM head width than ferrite's."""
    import dataclasses

    from ferrite_server.layers.quantization import config as quantization_config

    head_bits = None if bits == "none" else int(bits)
    on_the_fly = quantization_config._on_the_fly

    def with_head_bits(requested):  # type: ignore[no-untyped-def]
        config = on_the_fly(requested)
        if config is None or not isinstance(config.params, quantization_config.WeightOnlyParams):
            return config
        return dataclasses.replace(
            config, params=dataclasses.replace(config.params, lm_head_bits=head_bits)
        )

    quantization_config._on_the_fly = with_head_bits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quantize", default=None, help="the Engine's --quantize")
    parser.add_argument("--lm-head-bits", default=None, choices=["8", "4", "none"])
    parser.add_argument("--single-thread-max-rows", type=int, default=0,
                        help="the shard's --cpu-single-thread-max-rows")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.lm_head_bits:
        patch_lm_head_bits(args.lm_head_bits)
    model_dir = args.model_dir or ensure_default_model(Path("~/.cache/ferrite/models").expanduser())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt_ids = tokenizer(PROMPT)["input_ids"]
    config = ShardConfig(
        model_id=model_dir,
        uds_path=Path("/tmp/unused.sock"),
        dtype=args.dtype,
        kv_cache_memory_bytes=256 << 20,
        block_size_tokens=BLOCK_SIZE,
        quantize=args.quantize,
        cpu_single_thread_max_rows=args.single_thread_max_rows,
    )
    engine = Engine.load(config)
    engine.warmup(max_batch_prefill_tokens=256, max_batch_size=8, max_total_tokens=1024)
    dtype = getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    engine_rounds, hf_rounds = [], []
    all_threads = torch.get_num_threads()  # the Engine may run a decode step on fewer
    for _ in range(args.rounds):
        engine_rounds.append(engine_round(engine, prompt_ids, args.new_tokens))
        torch.set_num_threads(all_threads)
        hf_rounds.append(transformers_round(model, prompt_ids, args.new_tokens))
    best = max(engine_rounds, key=lambda r: r["tokens_per_s"])
    print(
        f"model {model_dir.name}, {args.dtype}, --quantize {args.quantize} (LM head "
        f"{args.lm_head_bits or 'default'}), prompt {len(prompt_ids)} tokens, "
        f"{args.new_tokens} decode steps, torch threads {all_threads}, "
        f"single-thread steps up to {args.single_thread_max_rows} rows"
    )
    engine_speeds = ", ".join(f"{r['tokens_per_s']:.1f}" for r in engine_rounds)
    print(f"engine       decode tokens/s: {best['tokens_per_s']:.1f} (rounds: {engine_speeds})")
    print(
        f"  median step {best['step_ms']:.2f} ms: forward {best['forward_ms']:.2f} ms, "
        f"LM head + sampling {best['logits_sampling_ms']:.2f} ms, "
        f"inputs / bookkeeping {best['bookkeeping_ms']:.2f} ms"
    )
    hf_speeds = ", ".join(f"{r:.1f}" for r in hf_rounds)
    print(f"transformers decode tokens/s: {max(hf_rounds):.1f} (rounds: {hf_speeds})")


if __name__ == "__main__":
    main()
