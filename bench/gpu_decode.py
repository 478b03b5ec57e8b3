"""Decode step time of a Llama-3.1-8B-shaped model (random bf16 weights) through the real
Engine, per attention backend, against the memory-bandwidth roofline.

Roofline of one decode step = (bytes of weights + bytes of KV read) / measured copy bandwidth;
speed does not depend on the weight values (DESIGN.md "Performance").

    python bench/gpu_decode.py --backends torch,triton --batch-sizes 1,8,32,128
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from ferrite_server.config import ShardConfig  # noqa: E402
from ferrite_server.engine.engine import Engine  # noqa: E402
from ferrite_server.engine.model_runner import ModelRunner  # noqa: E402
from ferrite_server.engine.types import (  # noqa: E402
    DecodeEntry,
    PrefillChunk,
    RequestParams,
    StepInput,
    StepOutput,
    StoppingParams,
)

LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
    },
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "eos_token_id": 128001,
}
BLOCK_SIZE = 16
VOCAB_FOR_PROMPTS = 32000  # prompt ids drawn below every vocabulary used here
PREFILL_BUDGET_TOKENS = 8192


def copy_bandwidth_bytes_per_s(device: torch.device) -> float:
    """Device-to-device copy of 2 GiB, bytes read + written over the median time."""
    source = torch.randn(2**29, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    times_s = []
    for _ in range(10):
        torch.cuda.synchronize()
        start = time.perf_counter()
        target.copy_(source)
        torch.cuda.synchronize()
        times_s.append(time.perf_counter() - start)
    return 2 * source.numel() * 4 / statistics.median(times_s[2:])


def fill_batch(engine: Engine, batch_size: int, context_tokens: int, blocks_per_seq: int) -> None:
    """Prefill `batch_size` random prompts of `context_tokens` tokens, within the prefill budget."""
    params = RequestParams(stopping=StoppingParams(max_new_tokens=10**6, ignore_eos=True))
    chunks = []
    for request_id in range(batch_size):
        prompt = torch.randint(0, VOCAB_FOR_PROMPTS, (context_tokens,)).tolist()
        table = tuple(range(request_id * blocks_per_seq, (request_id + 1) * blocks_per_seq))
        chunks.append(PrefillChunk(request_id, tuple(prompt), 0, table, True, params))
    per_step = max(1, PREFILL_BUDGET_TOKENS // context_tokens)
    for start in range(0, batch_size, per_step):
        check(engine.step(StepInput(chunks=tuple(chunks[start:start + per_step]))))


def check(output: StepOutput) -> None:
    errors = [g.error for g in output.generations if g.error]
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")


def time_decode_steps(engine: Engine, batch_size: int, blocks_per_seq: int, num_steps: int) -> float:
    decodes = tuple(
        DecodeEntry(i, tuple(range(i * blocks_per_seq, (i + 1) * blocks_per_seq)))
        for i in range(batch_size)
    )
    times_s = []
    for _ in range(num_steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        check(engine.step(StepInput(decodes=decodes)))  # host lists: already synchronized
        times_s.append(time.perf_counter() - start)
    return statistics.median(times_s[3:])


def bench_backend(model_dir: Path, backend: str, args: argparse.Namespace, bandwidth: float) -> list[dict]:
    config = ShardConfig(model_id=model_dir, uds_path=Path("/nonexistent"), dtype="bfloat16",
                         attention_backend=backend)  # type: ignore[arg-type]
    engine = Engine(ModelRunner.load(config, random_weights=True), config)
    max_total = args.context + args.steps + BLOCK_SIZE
    engine.warmup(PREFILL_BUDGET_TOKENS, max(args.batch_sizes), max_total)
    weight_bytes = sum(p.numel() * p.element_size() for p in engine._runner.model.parameters())
    blocks_per_seq = math.ceil((max_total + 1) / BLOCK_SIZE)
    cfg = LLAMA_31_8B
    kv_bytes_per_token = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * 128 * 2
    rows = []
    for batch_size in args.batch_sizes:
        engine.clear()
        fill_batch(engine, batch_size, args.context, blocks_per_seq)
        step_s = time_decode_steps(engine, batch_size, blocks_per_seq, args.steps)
        # weights only count for the LM head rows we sample; embedding rows are gathered
        embed_bytes = cfg["vocab_size"] * cfg["hidden_size"] * 2
        read_bytes = weight_bytes - embed_bytes + batch_size * (args.context + args.steps // 2) * kv_bytes_per_token
        roofline_s = read_bytes / bandwidth
        rows.append({
            "backend": backend, "batch_size": batch_size, "context_tokens": args.context,
            "step_ms": step_s * 1e3, "tokens_per_s": batch_size / step_s,
            "roofline_ms": roofline_s * 1e3, "fraction_of_roofline": roofline_s / step_s,
        })
        print(f"{backend:7s} batch {batch_size:4d}: {step_s * 1e3:7.2f} ms/step "
              f"{batch_size / step_s:8.1f} tok/s  roofline {roofline_s * 1e3:6.2f} ms "
              f"({100 * roofline_s / step_s:5.1f}%)", flush=True)
    del engine
    torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", default="torch,triton")
    parser.add_argument("--batch-sizes", default="1,8,32,128")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    device = torch.device("cuda:0")
    bandwidth = copy_bandwidth_bytes_per_s(device)
    print(f"device {torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
          f"copy bandwidth {bandwidth / 1e12:.2f} TB/s", flush=True)
    results = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
               "copy_bandwidth_tb_s": bandwidth / 1e12, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp)
        (model_dir / "config.json").write_text(json.dumps(LLAMA_31_8B))
        for backend in args.backends.split(","):
            try:
                results["rows"] += bench_backend(model_dir, backend, args, bandwidth)
            except Exception as error:  # keep the other backends' numbers
                print(f"{backend}: FAILED {type(error).__name__}: {error}", flush=True)
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
