"""Decode attention on CPU: SDPA with `enable_gqa` against each KV head's query heads as rows,
and contexts of different lengths padded all together against in groups of similar length.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=server python bench/cpu_decode_attention.py
        [--contexts 1x128,1x2048,32x128,32x1024] [--engine-contexts 1x1024,32x512]

Part 1, one layer's attention as the torch backend runs it (the bundled model's 9 query heads
over 3 KV heads of 64, all torch threads, best of 5, times 30 layers): S sequences of contexts
spread between L/2 and L keys (padded to L and masked, as a decode batch is; S = 1: exactly L),
bfloat16 and float32, SDPA with `enable_gqa` (before) and grouped (after, the path bfloat16 and
float16 take; float32 keeps `enable_gqa`), and the largest difference between them.
Part 2, through the Engine (bundled model, bfloat16, `--quantize int4`, one process, no gRPC):
S requests whose contexts are spread between L/4 and L tokens (sharing their prompt's cached
blocks, so one prefill builds them all), median of 8 decode steps in three settings, alternating
twice: `enable_gqa` and one padded batch (before), query heads grouped by KV head and one padded
batch, and both grouped (now). The settings are switched in this process only.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
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
from ferrite_server.layers.attention import torch_attention_math, torch_decode_batch
from ferrite_server.model_prep import ensure_default_model
from machine import cpu_model
from timing import best_ms

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, NUM_LAYERS = 9, 3, 64, 30
DECODE_STEPS = 8
GROUPED_ATTENTION = torch_attention_math._same_for_every_head
MIN_PADDING_SAVED_KEYS = torch_decode_batch.MIN_PADDING_SAVED_KEYS
# name -> (query heads grouped by KV head, contexts in groups of similar length)
SETTINGS = {"before": (False, False), "heads grouped": (True, False), "both (now)": (True, True)}


def grouped(enabled: bool) -> None:
    """Switch the grouped path on or off in this process (the benchmark's before / after)."""
    torch_attention_math._same_for_every_head = GROUPED_ATTENTION if enabled else (lambda mask: False)


def length_groups(enabled: bool) -> None:
    """Contexts in groups of similar length, or all in one padded batch (a cut never pays)."""
    torch_decode_batch.MIN_PADDING_SAVED_KEYS = MIN_PADDING_SAVED_KEYS if enabled else 1 << 30


def parse_contexts(text: str) -> list[tuple[int, int]]:  # "32x1024,1x128" -> [(32, 1024), (1, 128)]
    return [(int(s), int(length)) for s, length in (part.split("x") for part in text.split(","))]


def one_layer(contexts: list[tuple[int, int]]) -> None:
    print("| dtype | S x L | enable_gqa ms (30 layers) | grouped ms | before / after | max diff |")
    print("| --- | --- | --- | --- | --- | --- |")
    for dtype in (torch.bfloat16, torch.float32):
        for num_seqs, max_len in contexts:
            q = torch.randn(num_seqs, NUM_HEADS, 1, HEAD_DIM, dtype=dtype)
            k = torch.randn(num_seqs, NUM_KV_HEADS, max_len, HEAD_DIM, dtype=dtype)
            v = torch.randn_like(k)
            mask = None
            if num_seqs > 1:
                lens = torch.randint(max_len // 2, max_len + 1, (num_seqs,))
                mask = (torch.arange(max_len)[None, :] < lens[:, None])[:, None, None, :]

            def with_gqa() -> torch.Tensor:
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.125, enable_gqa=True)

            def by_group() -> torch.Tensor:
                return torch_attention_math._attend_one_query_by_group(q, k, v, mask, 0.125)

            before, reference = best_ms(with_gqa, repeats=5) * NUM_LAYERS, with_gqa()
            after, result = best_ms(by_group, repeats=5) * NUM_LAYERS, by_group()
            diff = (result.float() - reference.float()).abs().max().item()
            print(f"| {str(dtype).removeprefix('torch.')} | {num_seqs} x {max_len} | {before:.1f} | "
                  f"{after:.1f} | {before / after:.2f} | {diff:.2g} |", flush=True)


def decode_step_ms(engine: Engine, prompt_ids: list[int], num_seqs: int, max_len: int) -> list[float]:
    """S requests of contexts spread over [max_len / 4, max_len], then timed decode steps."""
    prompt = tuple((prompt_ids * (max_len // len(prompt_ids) + 1))[:max_len])
    lengths = [max_len - i * (3 * max_len // 4) // max(num_seqs - 1, 1) for i in range(num_seqs)]
    shared_blocks = -(-max_len // BLOCK_SIZE)
    params = RequestParams(stopping=StoppingParams(max_new_tokens=DECODE_STEPS + 2, ignore_eos=True))
    first = NewRequest(0, prompt, max_len, 0, max_len, tuple(range(shared_blocks + 1)), params)
    engine.step(StepInput(new_requests=(first,)))
    news, next_block = [], shared_blocks + 1
    for request_id, length in enumerate(lengths[1:], start=1):
        cached = (length - 1) // BLOCK_SIZE * BLOCK_SIZE  # whole blocks of the shared prompt
        own = -(-(length + DECODE_STEPS + 2) // BLOCK_SIZE) - cached // BLOCK_SIZE
        blocks = tuple(range(cached // BLOCK_SIZE)) + tuple(range(next_block, next_block + own))
        next_block += own
        news.append(NewRequest(request_id, prompt[:length], length, cached, length - cached, blocks, params))
    output = engine.step(StepInput(new_requests=tuple(news))) if news else None
    last = {0: 0} | ({g.request_id: g.tokens[-1].token_id for g in output.generations} if output else {})
    times_ms = []
    for _ in range(DECODE_STEPS):
        running = tuple(RunningRequest(i, (last[i],), (), 1) for i in range(num_seqs))
        start = time.perf_counter()
        output = engine.step(StepInput(running_requests=running))
        times_ms.append((time.perf_counter() - start) * 1e3)
        last = {g.request_id: g.tokens[-1].token_id for g in output.generations}
    engine.clear()
    return times_ms


def engine_steps(contexts: list[tuple[int, int]]) -> None:
    model_dir = ensure_default_model(Path("~/.cache/ferrite/models").expanduser())
    prompt_ids = AutoTokenizer.from_pretrained(model_dir)(PROMPT)["input_ids"]
    engine = Engine.load(ShardConfig(
        model_id=model_dir, uds_path=Path("/tmp/unused.sock"), dtype="bfloat16",
        kv_cache_memory_bytes=1 << 30, block_size_tokens=BLOCK_SIZE, quantize="int4",
    ))
    engine.warmup(max_batch_prefill_tokens=2048, max_batch_size=64, max_total_tokens=4096)
    print("| S x L (contexts L/4..L) | " + " | ".join(f"{name}: median step ms" for name in SETTINGS)
          + " | before / now |")
    print("| --- " * (len(SETTINGS) + 2) + "|")
    for num_seqs, max_len in contexts:
        times: dict[str, list[float]] = {name: [] for name in SETTINGS}
        for _ in range(2):
            for name, (heads, lengths) in SETTINGS.items():
                grouped(heads)
                length_groups(lengths)
                times[name] += decode_step_ms(engine, prompt_ids, num_seqs, max_len)
        medians = [statistics.median(times[name]) for name in SETTINGS]
        print(f"| {num_seqs} x {max_len} | " + " | ".join(f"{ms:.1f}" for ms in medians)
              + f" | {medians[0] / medians[-1]:.2f} |", flush=True)
    grouped(True)
    length_groups(True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=parse_contexts, default=parse_contexts("1x128,1x2048,32x128,32x1024"))
    parser.add_argument("--engine-contexts", type=parse_contexts, default=parse_contexts("1x1024,32x512,32x1024"))
    args = parser.parse_args()
    print(f"cpu: {cpu_model()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    one_layer(args.contexts)
    engine_steps(args.engine_contexts)


if __name__ == "__main__":
    main()
