"""Same-process A/B of the native CPU decode step built from different copies of its sources.

    PYTHONPATH=server python bench/native_step_ab.py [--quantize int8] [--rounds 8]
        [--new-tokens 128] --source before=/copy/of/old/kernels/cpu
        --source after=server/ferrite_server/kernels/cpu

One Engine (bundled model, bfloat16, 2 threads by default); each `--source NAME=DIR` (a
directory holding decoder_stack.cpp and its headers, e.g. `git worktree add` of an older commit)
is compiled into its own module, and the Engine's decode steps alternate between their stacks
round by round (Engine.step, no gRPC), so the machine's load hits each alike. Reports, per
source, the best and median round's decode tokens/s and the medians of the forward and of the
LM head + sampling.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_decode import BLOCK_SIZE, PROMPT, engine_round  # noqa: E402

from ferrite_server.config import ShardConfig  # noqa: E402
from ferrite_server.engine.engine import Engine  # noqa: E402
from ferrite_server.kernels.cpu.build import load_decoder_stack  # noqa: E402
from ferrite_server.model_prep import ensure_default_model  # noqa: E402
from ferrite_server.models.native_decode import NativeDecodeStack  # noqa: E402


def parse_source(text: str) -> tuple[str, Path]:
    name, _, directory = text.partition("=")
    if not name or not directory:
        raise argparse.ArgumentTypeError(f"--source takes NAME=DIR, got {text!r}")
    return name, Path(directory).resolve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", action="append", type=parse_source, required=True)
    parser.add_argument("--quantize", default=None, help="the Engine's --quantize")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = ensure_default_model(Path("~/.cache/ferrite/models").expanduser())
    prompt_ids = AutoTokenizer.from_pretrained(model_dir)(PROMPT)["input_ids"]
    config = ShardConfig(
        model_id=model_dir,
        uds_path=Path("/tmp/unused.sock"),
        dtype="bfloat16",
        kv_cache_memory_bytes=256 << 20,
        block_size_tokens=BLOCK_SIZE,
        quantize=args.quantize,
    )
    engine = Engine.load(config)
    engine.warmup(max_batch_prefill_tokens=256, max_batch_size=8, max_total_tokens=1024)
    causal_lm = engine._runner.model  # the Engine's model, whose decoder takes the stack
    decoder = causal_lm.model
    if decoder.native_decode is None:
        raise SystemExit("the native decode step is off for this model / machine")
    stacks = {
        name: NativeDecodeStack.on_module(
            load_decoder_stack(config.native_kernel_dir, directory), decoder, causal_lm.lm_head
        )
        for name, directory in args.source
    }
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in stacks}
    for _ in range(args.rounds):
        for name, stack in stacks.items():
            decoder.native_decode = stack
            rounds[name].append(engine_round(engine, prompt_ids, args.new_tokens))
    print(
        f"bundled model, --quantize {args.quantize}, {args.threads} threads, {args.rounds} "
        f"rounds of {args.new_tokens} decode steps per source"
    )
    print("| source | tok/s best | tok/s median | forward ms | LM head + sampling ms |")
    print("| --- | --- | --- | --- | --- |")
    for name, results in rounds.items():
        speeds = [r["tokens_per_s"] for r in results]
        print(
            f"| {name} | {max(speeds):.1f} | {statistics.median(speeds):.1f} | "
            f"{statistics.median(r['forward_ms'] for r in results):.3f} | "
            f"{statistics.median(r['logits_sampling_ms'] for r in results):.3f} |"
        )


if __name__ == "__main__":
    main()
