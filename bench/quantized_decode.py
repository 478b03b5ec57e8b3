"""Decode step time with quantized weights / KV against the unquantized model, side by side.

Every variant is the same model shape with random weights (speed does not depend on the values)
run through the real Engine in one process; ratios are against the first variant (bf16).
Default: the Llama-3.1-8B shape on CUDA (issue 9's goal: FP8 >= 1.6x faster than bf16 at
batch 1). `--shape small --device cpu` runs every path on a CPU in seconds (a smoke run: CPU
quantized paths dequantize and are slower than bf16, by design).

    python bench/quantized_decode.py                                   # GPU, 8B shape
    python bench/quantized_decode.py --shape small --device cpu --batch-sizes 1 --steps 5
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from decode_steps import LLAMA_31_8B, step_times_by_batch  # noqa: E402

from ferrite_server.config import ShardConfig  # noqa: E402
from ferrite_server.engine.engine import Engine  # noqa: E402
from ferrite_server.engine.model_runner import ModelRunner  # noqa: E402

SMALL_SHAPE = {
    **LLAMA_31_8B,
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vocab_size": 32000,
}
GPTQ_CONFIG = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False}
AWQ_CONFIG = {
    "quant_method": "awq",
    "bits": 4,
    "group_size": 128,
    "zero_point": True,
    "version": "gemm",
}


@dataclass(frozen=True)
class Variant:
    name: str
    quantize: str | None = None  # --quantize
    kv_cache_dtype: str = "auto"
    checkpoint_quantization: dict | None = None  # config.json quantization_config


VARIANTS = (
    Variant("bf16"),
    Variant("fp8", quantize="fp8"),
    Variant("fp8+kv-fp8", quantize="fp8", kv_cache_dtype="fp8"),
    Variant("gptq-4bit", checkpoint_quantization=GPTQ_CONFIG),
    Variant("awq-4bit", checkpoint_quantization=AWQ_CONFIG),
    Variant("bnb-nf4", quantize="bitsandbytes-nf4"),
)


def run_variant(variant: Variant, shape: dict, args: argparse.Namespace, tmp: Path) -> list[dict]:
    model_dir = tmp / variant.name
    model_dir.mkdir()
    config_json = dict(shape)
    if variant.checkpoint_quantization is not None:
        config_json["quantization_config"] = variant.checkpoint_quantization
    (model_dir / "config.json").write_text(json.dumps(config_json))
    config = ShardConfig(
        model_id=model_dir,
        uds_path=Path("/nonexistent"),
        dtype="bfloat16",
        device=args.device,
        quantize=variant.quantize,
        kv_cache_dtype=variant.kv_cache_dtype,  # type: ignore[arg-type]
        kv_cache_memory_bytes=args.kv_cache_memory,
    )
    engine = Engine(ModelRunner.load(config, random_weights=True), config)
    prefill_budget = min(8192, max(args.batch_sizes) * args.context)
    rows = []
    for batch_size, step in step_times_by_batch(
        engine, args.batch_sizes, args.context, args.steps, prefill_budget
    ):
        rows.append(
            {
                "variant": variant.name,
                "batch_size": batch_size,
                "step_ms": step.wall_s * 1e3,
                "weight_bytes": engine._runner.facts.model_memory_bytes,
            }
        )
    del engine
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["8b", "small"], default="8b")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--variants", default=",".join(v.name for v in VARIANTS))
    parser.add_argument("--kv-cache-memory", type=int, default=None, help="bytes (CPU)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    args.batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    if args.device == "cpu" and args.kv_cache_memory is None:
        args.kv_cache_memory = 256 << 20
    shape = LLAMA_31_8B if args.shape == "8b" else SMALL_SHAPE
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, shape {args.shape}", flush=True)
    wanted = args.variants.split(",")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in (v for v in VARIANTS if v.name in wanted):
            try:
                rows += run_variant(variant, shape, args, Path(tmp))
            except Exception as error:  # keep the other variants' numbers
                print(f"{variant.name}: FAILED {type(error).__name__}: {error}", flush=True)
    baseline = {row["batch_size"]: row["step_ms"] for row in rows if row["variant"] == wanted[0]}
    for row in rows:
        base_ms = baseline.get(row["batch_size"])
        row["speedup_vs_first"] = base_ms / row["step_ms"] if base_ms else None
        speedup = f"{row['speedup_vs_first']:.2f}x" if base_ms else "-"
        print(
            f"{row['variant']:11s} batch {row['batch_size']:4d}: {row['step_ms']:8.2f} ms/step  "
            f"{speedup} vs {wanted[0]}  weights {row['weight_bytes'] / 2**30:.2f} GiB",
            flush=True,
        )
    if args.output:
        args.output.write_text(
            json.dumps({"device": name, "shape": args.shape, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
