"""Decode step time through the real Engine, per attention backend and batch size.

On CUDA (default): a Llama-3.1-8B-shaped model with random bf16 weights, against the
memory-bandwidth roofline = (bytes of weights + bytes of KV read) / measured copy bandwidth;
speed does not depend on the weight values (DESIGN.md "Performance").
On CPU: a real checkpoint (`--model-dir`), reporting the time per step spent outside the
forward pass and sampling (input building, bookkeeping) from the engine's own timings.

    python bench/decode_steps.py --backends torch,triton --batch-sizes 1,8,32,128
    python bench/decode_steps.py --backends triton --cuda-graphs on,off    # graphs side by side
    python bench/decode_steps.py --device cpu --model-dir DIR --backends torch --batch-sizes 1,8,32
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from ferrite_server.config import ShardConfig  # noqa: E402
from ferrite_server.engine.engine import Engine  # noqa: E402
from ferrite_server.engine.model_runner import ModelRunner  # noqa: E402
from ferrite_server.engine.types import (  # noqa: E402
    NewRequest,
    RequestParams,
    RunningRequest,
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


def fill_batch(engine: Engine, batch_size: int, context_tokens: int, blocks_per_seq: int) -> dict[int, int]:
    """Prefill `batch_size` random prompts of `context_tokens` tokens, within the prefill budget
    (each request's whole block table sent up front). Returns each request's sampled token."""
    params = RequestParams(stopping=StoppingParams(max_new_tokens=10**6, ignore_eos=True))
    new_requests = []
    for request_id in range(batch_size):
        prompt = tuple(torch.randint(0, VOCAB_FOR_PROMPTS, (context_tokens,)).tolist())
        table = tuple(range(request_id * blocks_per_seq, (request_id + 1) * blocks_per_seq))
        new_requests.append(NewRequest(request_id, prompt, len(prompt), 0, len(prompt), table, params))
    per_step = max(1, PREFILL_BUDGET_TOKENS // context_tokens)
    last_tokens: dict[int, int] = {}
    for start in range(0, batch_size, per_step):
        output = engine.step(StepInput(new_requests=tuple(new_requests[start:start + per_step])))
        last_tokens.update(check(output))
    return last_tokens


def check(output: StepOutput) -> dict[int, int]:
    """Each request's sampled token; raises if any request failed."""
    errors = [g.error for g in output.generations if g.error]
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return {g.request_id: g.tokens[-1].token_id for g in output.generations}


@dataclass(frozen=True)
class StepTime:
    wall_s: float  # median wall time of a decode step
    forward_s: float  # the engine's own forward time in that step (median)
    sampling_s: float


def time_decode_steps(engine: Engine, last_tokens: dict[int, int], num_steps: int) -> StepTime:
    """Decode steps as the router sends them: each request's sampled token, no new blocks (its
    table already covers every step). last_tokens (request id -> token sampled last) is kept
    up to date, so a later call continues the same requests."""
    walls_s, forwards_s, samplings_s = [], [], []
    for _ in range(num_steps):
        decodes = tuple(RunningRequest(rid, (token,), (), 1) for rid, token in last_tokens.items())
        synchronize()
        start = time.perf_counter()
        output = engine.step(StepInput(running_requests=decodes))  # host lists: already synchronized
        walls_s.append(time.perf_counter() - start)
        last_tokens.update(check(output))
        forwards_s.append(output.timings.forward_ns / 1e9)
        samplings_s.append(output.timings.sampling_ns / 1e9)
    warm = slice(min(3, num_steps - 1), None)
    return StepTime(*(statistics.median(x[warm]) for x in (walls_s, forwards_s, samplings_s)))


def step_times_by_batch(
    engine: Engine, batch_sizes: list[int], context: int, steps: int,
    prefill_budget_tokens: int = PREFILL_BUDGET_TOKENS,
) -> Iterator[tuple[int, StepTime]]:
    """Warm the engine up once, then for each batch size: fill the batch with prompts of
    `context` tokens and time `steps` decode steps."""
    max_total = context + steps + BLOCK_SIZE
    engine.warmup(prefill_budget_tokens, max(batch_sizes), max_total)
    blocks_per_seq = math.ceil((max_total + 1) / BLOCK_SIZE)
    for batch_size in batch_sizes:
        engine.clear()
        last_tokens = fill_batch(engine, batch_size, context, blocks_per_seq)
        yield batch_size, time_decode_steps(engine, last_tokens, steps)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench_backend(model_dir: Path, variant: str, args: argparse.Namespace, bandwidth: float | None) -> list[dict]:
    """variant: an attention backend name, "+graphs" when decode runs as CUDA graphs."""
    backend, graphs = variant.removesuffix("+graphs"), variant.endswith("+graphs")
    config = ShardConfig(model_id=model_dir, uds_path=Path("/nonexistent"), dtype=args.dtype,
                         attention_backend=backend, device=args.device,
                         kv_cache_memory_bytes=args.kv_cache_memory,
                         cuda_graph_batch_sizes=None if graphs else ())  # type: ignore[arg-type]
    engine = Engine(ModelRunner.load(config, random_weights=args.model_dir is None), config)
    rows = []
    for batch_size, step in step_times_by_batch(engine, args.batch_sizes, args.context, args.steps):
        outside_s = step.wall_s - step.forward_s - step.sampling_s
        row = {
            "backend": backend, "cuda_graphs": graphs, "batch_size": batch_size, "context_tokens": args.context,
            "step_ms": step.wall_s * 1e3, "forward_ms": step.forward_s * 1e3,
            "sampling_ms": step.sampling_s * 1e3, "outside_forward_and_sampling_ms": outside_s * 1e3,
            "tokens_per_s": batch_size / step.wall_s,
        }
        line = (f"{variant:14s} batch {batch_size:4d}: {step.wall_s * 1e3:8.2f} ms/step "
                f"{batch_size / step.wall_s:8.1f} tok/s  forward {step.forward_s * 1e3:7.2f} ms "
                f"sampling {step.sampling_s * 1e3:6.2f} ms  other {outside_s * 1e3:5.2f} ms")
        if bandwidth is not None:
            roofline_s = roofline_bytes(engine, batch_size, args) / bandwidth
            row.update(roofline_ms=roofline_s * 1e3, fraction_of_roofline=roofline_s / step.wall_s)
            line += f"  roofline {roofline_s * 1e3:6.2f} ms ({100 * roofline_s / step.wall_s:5.1f}%)"
        rows.append(row)
        print(line, flush=True)
    del engine
    torch.cuda.empty_cache()
    return rows


def roofline_bytes(engine: Engine, batch_size: int, args: argparse.Namespace) -> int:
    """Bytes one decode step must read: every weight but the embedding table (only the
    batch's rows are gathered), plus each sequence's K/V."""
    cfg = engine._runner.facts.config
    element_bytes = torch.finfo(engine._runner.facts.dtype).bits // 8
    weight_bytes = sum(p.numel() * p.element_size() for p in engine._runner.model.parameters())
    embed_bytes = cfg.vocab_size * cfg.hidden_size * element_bytes
    kv_bytes_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * element_bytes
    return weight_bytes - embed_bytes + batch_size * (args.context + args.steps // 2) * kv_bytes_per_token


def variants(args: argparse.Namespace) -> list[str]:
    """Backends, each once per --cuda-graphs setting (graphs only exist for triton on CUDA)."""
    settings = args.cuda_graphs.split(",")
    result = []
    for backend in args.backends.split(","):
        for setting in settings:
            graphs = setting == "on" and backend == "triton" and args.device.startswith("cuda")
            name = f"{backend}+graphs" if graphs else backend
            if name not in result:
                result.append(name)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", default="torch,triton")
    parser.add_argument("--batch-sizes", default="1,8,32,128")
    parser.add_argument("--cuda-graphs", default="off",
                        help="on, off or on,off: decode through CUDA graphs (CUDA, triton only)")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="a real checkpoint (default: 8B-shaped random weights)")
    parser.add_argument("--kv-cache-memory", type=int, default=None, help="bytes (CPU)")
    args = parser.parse_args()
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    device = torch.device(args.device)
    if device.type == "cuda":
        bandwidth = copy_bandwidth_bytes_per_s(device)
        name = torch.cuda.get_device_name(device)
        print(f"device {name}, torch {torch.__version__}, copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    else:
        bandwidth, name = None, f"cpu ({torch.get_num_threads()} threads)"
        print(f"device {name}, torch {torch.__version__}", flush=True)
    results = {"device": name, "torch": torch.__version__, "rows": [],
               "copy_bandwidth_tb_s": None if bandwidth is None else bandwidth / 1e12}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or Path(tmp)
        if args.model_dir is None:
            (model_dir / "config.json").write_text(json.dumps(LLAMA_31_8B))
        for variant in variants(args):
            try:
                results["rows"] += bench_backend(model_dir, variant, args, bandwidth)
            except Exception as error:  # keep the other backends' numbers
                print(f"{variant}: FAILED {type(error).__name__}: {error}", flush=True)
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
