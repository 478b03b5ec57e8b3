"""FP8 checkpoints written by the tests: per-tensor or block scales, from a tiny float model.

Each decoder linear weight W [N, K] becomes `weight` (float8 e4m3) with
- per-tensor: `weight_scale` (a scalar, W / scale fits e4m3) and a static `input_scale`;
- block: `weight_scale_inv` [ceil(N / bn), ceil(K / bk)], one scale per block (multiplied in).
Beside it a float checkpoint holds the dequantized weights (e4m3 value * scale), the reference.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ferrite_server.layers.quantization.fp8_ops import FP8_MAX, dequantize_blocks, to_fp8
from tests.support.quantized_checkpoints import LINEAR_NAMES


def _per_tensor(weight: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    scale = weight.abs().max().float() / FP8_MAX
    fp8 = to_fp8(weight, scale)
    parts = {"weight": fp8, "weight_scale": scale.reshape(()), "input_scale": torch.tensor(0.05)}
    return parts, fp8.float() * scale


def _blocks(
    weight: torch.Tensor, block: tuple[int, int]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    rows, cols = weight.shape
    block_n, block_k = block
    grid = weight.float().reshape(rows // block_n, block_n, cols // block_k, block_k)
    scales = grid.abs().amax(dim=(1, 3)) / FP8_MAX  # [N / bn, K / bk]
    fp8 = to_fp8(grid, scales[:, None, :, None]).reshape(rows, cols)
    return {"weight": fp8, "weight_scale_inv": scales}, dequantize_blocks(
        fp8, scales, block, torch.float32
    )


def write_fp8_checkpoints(
    source_dir: Path, out_dir: Path, block: tuple[int, int] | None
) -> tuple[Path, Path]:
    """(fp8 checkpoint, float checkpoint of its dequantized weights)."""
    tensors = load_file(source_dir / "model.safetensors")
    quantized: dict[str, torch.Tensor] = {}
    dequantized: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        prefix = name.removesuffix(".weight")
        if not any(prefix.endswith("." + linear) for linear in LINEAR_NAMES):
            quantized[name] = dequantized[name] = tensor
            continue
        parts, dequantized[name] = _per_tensor(tensor) if block is None else _blocks(tensor, block)
        quantized.update({f"{prefix}.{part}": value for part, value in parts.items()})
    config = json.loads((source_dir / "config.json").read_text())
    quantization_config: dict = {"quant_method": "fp8", "activation_scheme": "static"}
    if block is not None:
        quantization_config = {
            "quant_method": "fp8",
            "activation_scheme": "dynamic",
            "weight_block_size": list(block),
        }
    name = "fp8-block" if block else "fp8-tensor"
    fp8_dir = _write(
        out_dir / name,
        source_dir,
        quantized,
        {**config, "quantization_config": quantization_config},
    )
    float_dir = _write(out_dir / f"{name}-dequantized", source_dir, dequantized, config)
    return fp8_dir, float_dir


def _write(
    directory: Path, source_dir: Path, tensors: dict[str, torch.Tensor], config: dict
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if (source_dir / "generation_config.json").is_file():
        shutil.copy(source_dir / "generation_config.json", directory / "generation_config.json")
    (directory / "config.json").write_text(json.dumps(config))
    save_file(
        {name: t.contiguous() for name, t in tensors.items()}, directory / "model.safetensors"
    )
    return directory
