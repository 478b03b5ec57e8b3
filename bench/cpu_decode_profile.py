"""Where a CPU batch-1 decode step of the bundled model goes: operator calls and their time.

    PYTHONPATH=server python bench/cpu_decode_profile.py [--dtype bfloat16] [--quantize int4]
        [--threads 2] [--steps 20]

Through the Engine in this process (no gRPC): one prompt, a few warm decode steps, then one
step with every aten call logged (their count by name: what each token pays in dispatches),
then `--steps` steps under torch.profiler (the table sorted by self CPU time).
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_decode import BLOCK_SIZE, PROMPT, engine_round  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from ferrite_server.config import ShardConfig  # noqa: E402
from ferrite_server.engine.engine import Engine  # noqa: E402
from ferrite_server.engine.types import (  # noqa: E402
    NewRequest,
    RequestParams,
    RunningRequest,
    StepInput,
    StoppingParams,
)
from ferrite_server.model_prep import ensure_default_model  # noqa: E402


class _OperatorLog(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def operators_of_one_step(engine: Engine, prompt_ids: list[int]) -> collections.Counter[str]:
    params = RequestParams(stopping=StoppingParams(max_new_tokens=8, ignore_eos=True))
    table = tuple(range(-(-(len(prompt_ids) + 9) // BLOCK_SIZE)))
    new = NewRequest(1, tuple(prompt_ids), len(prompt_ids), 0, len(prompt_ids), table, params)
    output = engine.step(StepInput(new_requests=(new,)))
    for logged in (False, False, True):
        running = RunningRequest(1, (output.generations[0].tokens[-1].token_id,), (), 1)
        log = _OperatorLog()
        if logged:
            with log:
                output = engine.step(StepInput(running_requests=(running,)))
        else:
            output = engine.step(StepInput(running_requests=(running,)))
    engine.clear()
    return collections.Counter(log.names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--quantize", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = ensure_default_model(Path("~/.cache/ferrite/models").expanduser())
    prompt_ids = AutoTokenizer.from_pretrained(model_dir)(PROMPT)["input_ids"]
    config = ShardConfig(model_id=model_dir, uds_path=Path("/tmp/unused.sock"), dtype=args.dtype,
                         kv_cache_memory_bytes=64 << 20, block_size_tokens=BLOCK_SIZE,
                         quantize=args.quantize)
    engine = Engine.load(config)
    engine.warmup(max_batch_prefill_tokens=256, max_batch_size=8, max_total_tokens=1024)
    counts = operators_of_one_step(engine, prompt_ids)
    print(f"{sum(counts.values())} operator calls in one decode step "
          f"({args.dtype}, quantize {args.quantize}, {torch.get_num_threads()} threads):")
    print(", ".join(f"{name.removeprefix('aten.')} {n}" for name, n in counts.most_common()))
    engine_round(engine, prompt_ids, 10)  # warm
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        timing = engine_round(engine, prompt_ids, args.steps)
    print(f"\n{timing['tokens_per_s']:.1f} tok/s under the profiler; median step "
          f"{timing['step_ms']:.2f} ms (forward {timing['forward_ms']:.2f}, LM head + sampling "
          f"{timing['logits_sampling_ms']:.2f})")
    print(profiled.key_averages().table(sort_by="self_cpu_time_total", row_limit=25,
                                        max_name_column_width=60))


if __name__ == "__main__":
    main()
