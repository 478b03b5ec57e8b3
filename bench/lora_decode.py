"""Decode step time of 16 requests over 4 LoRA adapters against 16 base-model requests, one
engine (the adapters loaded in both cases), driven through Engine.step (no gRPC).

    PYTHONPATH=server python bench/lora_decode.py [--model-dir DIR] [--dtype float32]
        [--rank 16] [--requests 16] [--adapters 4] [--steps 32] [--rounds 3] [--threads N]

The adapters are written here in PEFT's format (random weights, every q/k/v/o/gate/up/down
projection). Each round runs, side by side so machine load hits all alike: the base-model
batch, the adapter batch with the CPU path that applies each adapter to its rows (the engine's
default), and the adapter batch with the gather path (each token gathers its adapter's
matrices, then bmm: what a CUDA-graph stand-in does on CPU). Reports the median decode step
of the best round of each, and one layer's LoRA delta alone for both paths.

On a CUDA device the same command measures the Triton kernels (both "paths" then run them:
the layers take the kernels whatever the host knows) with decode CUDA graphs on, e.g.
`--dtype bfloat16 --requests 16 --adapters 4`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import save_file

from ferrite_server.config import LoraConfig, ShardConfig
from ferrite_server.engine import forward_inputs
from ferrite_server.engine.engine import Engine
from ferrite_server.engine.types import NewRequest, RequestParams, RunningRequest, StepInput, StoppingParams
from ferrite_server.layers.lora import LoraBatch
from ferrite_server.model_prep import ensure_default_model
from machine import cpu_model

BLOCK_SIZE = 16
PROMPT_TOKENS = 32
PROJECTIONS = {"self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"), "mlp": ("gate_proj", "up_proj", "down_proj")}


def write_adapter(directory: Path, model_dir: Path, rank: int, seed: int) -> Path:
    """A PEFT LoRA adapter with random weights for every projection of the model."""
    hf = json.loads((model_dir / "config.json").read_text())
    hidden, inter = hf["hidden_size"], hf["intermediate_size"]
    head_dim = hf.get("head_dim") or hidden // hf["num_attention_heads"]
    kv = hf["num_key_value_heads"] * head_dim
    shapes = {"q_proj": (hidden, hf["num_attention_heads"] * head_dim), "k_proj": (hidden, kv),
              "v_proj": (hidden, kv), "o_proj": (hf["num_attention_heads"] * head_dim, hidden),
              "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)}
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(hf["num_hidden_layers"]):
        for block, modules in PROJECTIONS.items():
            for module in modules:
                in_features, out_features = shapes[module]
                prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
                tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator) * 0.02
                tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator) * 0.02
    directory.mkdir(parents=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(shapes)}
    (directory / "adapter_config.json").write_text(json.dumps(config))
    return directory


@contextmanager
def gather_path() -> Iterator[None]:
    """Steps whose LoraBatch carries no host runs: the layers take the gather path."""
    build = LoraBatch.from_sequences

    def without_runs(adapters, row_starts, device):  # type: ignore[no-untyped-def]
        batch = build(adapters, row_starts, device)
        return None if batch is None else LoraBatch(batch.token_adapters)

    forward_inputs.LoraBatch.from_sequences = without_runs  # type: ignore[method-assign]
    try:
        yield
    finally:
        forward_inputs.LoraBatch.from_sequences = build  # type: ignore[method-assign]


def decode_round(engine: Engine, adapter_ids: list[str], steps: int) -> float:
    """Median decode step (ms) of len(adapter_ids) requests, after one prefill step."""
    blocks_per_request = -(-(PROMPT_TOKENS + steps + 2) // BLOCK_SIZE)
    new_requests = []
    for index, adapter_id in enumerate(adapter_ids):
        table = tuple(range(index * blocks_per_request, (index + 1) * blocks_per_request))
        prompt = tuple(100 + (index * 13 + position * 7) % 5000 for position in range(PROMPT_TOKENS))
        params = RequestParams(stopping=StoppingParams(max_new_tokens=steps + 2, ignore_eos=True),
                               adapter_id=adapter_id)
        new_requests.append(NewRequest(index, prompt, PROMPT_TOKENS, 0, PROMPT_TOKENS, table, params))
    output = engine.step(StepInput(new_requests=tuple(new_requests)))
    step_s = []
    for _ in range(steps):
        running = tuple(RunningRequest(g.request_id, (g.tokens[-1].token_id,), (), 1) for g in output.generations)
        start = time.perf_counter()
        output = engine.step(StepInput(running_requests=running))
        step_s.append(time.perf_counter() - start)
    engine.clear()
    return statistics.median(step_s) * 1e3


def layer_delta_ms(engine: Engine, num_requests: int, num_adapters: int) -> dict[str, float]:
    """One gate_up layer's LoRA delta for a decode batch: by adapter runs vs gathered."""
    layer = engine._runner.model.model.layers[0].mlp.gate_up_proj.lora  # type: ignore[union-attr]
    per_adapter = num_requests // num_adapters
    adapters = [index // per_adapter for index in range(num_requests)]
    assert layer is not None
    device, dtype = layer.lora_a.device, layer.lora_a.dtype
    batch = LoraBatch.from_sequences(adapters, list(range(num_requests + 1)), device)
    assert batch is not None
    x = torch.randn(num_requests, layer.lora_a.shape[2], dtype=dtype, device=device)
    y = torch.zeros(num_requests, layer.lora_b.shape[1], dtype=dtype, device=device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    timings = {}
    for name, lora in (("runs", batch), ("gather", LoraBatch(batch.token_adapters))):
        samples = []
        for _ in range(200):
            synchronize()
            start = time.perf_counter()
            layer.add_to(y, x, lora)
            synchronize()
            samples.append(time.perf_counter() - start)
        timings[name] = statistics.median(samples) * 1e3
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--dtype", default="float32", choices=["bfloat16", "float32"])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = args.model_dir or ensure_default_model(Path("~/.cache/ferrite/models").expanduser())
    with tempfile.TemporaryDirectory(prefix="ferrite-lora-bench-") as tmp:
        adapters = tuple((f"adapter{index}", str(write_adapter(Path(tmp) / f"a{index}", model_dir, args.rank, index)))
                         for index in range(args.adapters))
        config = ShardConfig(model_id=model_dir, uds_path=Path("/tmp/unused.sock"), dtype=args.dtype,
                             kv_cache_memory_bytes=512 << 20, block_size_tokens=BLOCK_SIZE)
        engine = Engine.load(replace(config, lora=LoraConfig(adapters=adapters, max_rank=args.rank)))
    engine.warmup(max_batch_prefill_tokens=1024, max_batch_size=args.requests, max_total_tokens=256)
    names = [name for name, _ in adapters]
    mixed = [names[index * args.adapters // args.requests] for index in range(args.requests)]
    rounds: dict[str, list[float]] = {"base": [], "lora_runs": [], "lora_gather": []}
    for _ in range(args.rounds):
        rounds["base"].append(decode_round(engine, [""] * args.requests, args.steps))
        rounds["lora_runs"].append(decode_round(engine, mixed, args.steps))
        with gather_path():
            rounds["lora_gather"].append(decode_round(engine, mixed, args.steps))
    print(f"model {model_dir.name}, {args.dtype}, {args.requests} requests, {args.adapters} adapters of "
          f"rank {args.rank} on all 7 projections, prompt {PROMPT_TOKENS} tokens, {args.steps} decode "
          f"steps, torch threads {torch.get_num_threads()}")
    print(f"cpu: {cpu_model()}")
    base = min(rounds["base"])
    for name, samples in rounds.items():
        listed = ", ".join(f"{sample:.1f}" for sample in samples)
        print(f"{name:12s} median decode step {min(samples):7.1f} ms ({min(samples) / base:.2f}x base; "
              f"rounds: {listed})")
    layer = layer_delta_ms(engine, args.requests, args.adapters)
    print(f"one gate_up layer's LoRA delta: runs {layer['runs']:.3f} ms, gather {layer['gather']:.3f} ms")


if __name__ == "__main__":
    main()
