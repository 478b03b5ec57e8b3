"""Quantized checkpoints written by the tests themselves, in each format's exact layout.

From a tiny float checkpoint (tiny_models.py), every linear weight W [N, K] of the decoder is
quantized round-to-nearest into known integers: q [K, N] in [0, 2^bits), per-group zero points
z [G, N] and fp16 scales s [G, N], with group g(k) = g_idx[k]. GPTQ checkpoints use an act-order
g_idx (a random permutation of the groups over the input features) and store zero - 1 (the
original "gptq" format); AWQ ones use consecutive groups. Beside each quantized checkpoint the
helper writes a float checkpoint whose linear weights are exactly the dequantized ones,
(q - z[g]) * s[g]: the reference for generation.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

from ferrite_server.layers.quantization.int_packing import AWQ_ORDER, pack_int32

PackedScheme = Literal["gptq", "awq"]
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class KnownQuantized:
    """One linear weight as known integers: W[n, k] = (q[k, n] - z[g[k], n]) * s[g[k], n]."""

    q: torch.Tensor  # int64 [K, N]
    zeros: torch.Tensor  # int64 [G, N]
    scales: torch.Tensor  # float16 [G, N]
    g_idx: torch.Tensor  # int64 [K]

    def dequantized(self) -> torch.Tensor:  # [N, K] float32
        groups = self.g_idx
        return ((self.q - self.zeros[groups]).float() * self.scales.float()[groups]).t()


def act_order_g_idx(num_inputs: int, group_size: int, generator: torch.Generator) -> torch.Tensor:
    """Group of each input feature when GPTQ quantized the features in a permuted order."""
    order = torch.randperm(num_inputs, generator=generator)
    g_idx = torch.empty(num_inputs, dtype=torch.int64)
    g_idx[order] = torch.arange(num_inputs) // group_size
    return g_idx


def rtn_quantize(
    weight: torch.Tensor, bits: int, g_idx: torch.Tensor, min_zero: int = 0
) -> KnownQuantized:
    """Asymmetric round-to-nearest of weight [N, K] per group (of input features) and column.

    min_zero 1 for GPTQ's original format, which stores zero - 1 in `bits` bits: a zero of 0
    would wrap to 2^bits - 1 (and read back as 2^bits, as GPTQ's own kernels do).
    """
    w = weight.t().float()  # [K, N]
    num_groups = int(g_idx.max()) + 1
    max_code = (1 << bits) - 1
    lows = torch.stack([w[g_idx == g].amin(dim=0) for g in range(num_groups)]).clamp(max=0)
    highs = torch.stack([w[g_idx == g].amax(dim=0) for g in range(num_groups)]).clamp(min=0)
    scales = ((highs - lows) / max_code).clamp(min=1e-4).half()  # [G, N]
    zeros = torch.round(-lows / scales.float()).clamp(min_zero, max_code).long()  # [G, N]
    q = torch.round(w / scales.float()[g_idx]) + zeros[g_idx]
    return KnownQuantized(q.clamp(0, max_code).long(), zeros, scales, g_idx)


def gptq_tensors(known: KnownQuantized, bits: int, zero_offset: int = 1) -> dict[str, torch.Tensor]:
    return {
        "qweight": pack_int32(known.q, bits, dim=0),
        "qzeros": pack_int32(known.zeros - zero_offset, bits, dim=1),
        "scales": known.scales,
        "g_idx": known.g_idx.to(torch.int32),
    }


def awq_tensors(known: KnownQuantized) -> dict[str, torch.Tensor]:
    return {
        "qweight": pack_int32(known.q, 4, dim=1, order=AWQ_ORDER),
        "qzeros": pack_int32(known.zeros, 4, dim=1, order=AWQ_ORDER),
        "scales": known.scales,
    }


@dataclass(frozen=True)
class PackedCheckpoints:
    quantized_dir: Path
    float_dir: Path  # same model with the dequantized weights, unquantized
    known: dict[str, KnownQuantized]  # by checkpoint prefix, e.g. model.layers.0.self_attn.q_proj


def write_packed_checkpoints(
    source_dir: Path,
    out_dir: Path,
    scheme: PackedScheme,
    group_size: int,
    bits: int = 4,
    seed: int = 0,
) -> PackedCheckpoints:
    generator = torch.Generator().manual_seed(seed)
    tensors = load_file(source_dir / "model.safetensors")
    quantized: dict[str, torch.Tensor] = {}
    dequantized: dict[str, torch.Tensor] = {}
    known: dict[str, KnownQuantized] = {}
    act_order: dict[str, torch.Tensor] = {}  # q/k/v (and gate/up) share their input's order
    for name, tensor in tensors.items():
        prefix = name.removesuffix(".weight")
        if not any(prefix.endswith("." + linear) for linear in LINEAR_NAMES):
            quantized[name] = dequantized[name] = tensor
            continue
        num_inputs = tensor.shape[1]
        if scheme == "gptq":
            key = f"{prefix.rsplit('.', 2)[0]}:{num_inputs}:{prefix.endswith(('o_proj', 'down_proj'))}"
            if key not in act_order:
                act_order[key] = act_order_g_idx(num_inputs, group_size, generator)
            g_idx = act_order[key]
        else:
            g_idx = torch.arange(num_inputs) // group_size
        known[prefix] = rtn_quantize(tensor, bits, g_idx, min_zero=1 if scheme == "gptq" else 0)
        parts = (
            gptq_tensors(known[prefix], bits) if scheme == "gptq" else awq_tensors(known[prefix])
        )
        quantized.update({f"{prefix}.{part}": value for part, value in parts.items()})
        dequantized[name] = known[prefix].dequantized()
    config = json.loads((source_dir / "config.json").read_text())
    quantization_config = (
        {
            "quant_method": "gptq",
            "bits": bits,
            "group_size": group_size,
            "desc_act": True,
            "sym": False,
        }
        if scheme == "gptq"
        else {
            "quant_method": "awq",
            "bits": 4,
            "group_size": group_size,
            "zero_point": True,
            "version": "gemm",
        }
    )
    quantized_dir = _write(
        out_dir / scheme,
        source_dir,
        quantized,
        {**config, "quantization_config": quantization_config},
    )
    float_dir = _write(out_dir / f"{scheme}-dequantized", source_dir, dequantized, config)
    return PackedCheckpoints(quantized_dir, float_dir, known)


def _write(
    directory: Path, source_dir: Path, tensors: dict[str, torch.Tensor], config: dict
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for extra in ("generation_config.json",):
        if (source_dir / extra).is_file():
            shutil.copy(source_dir / extra, directory / extra)
    (directory / "config.json").write_text(json.dumps(config))
    save_file(
        {name: t.contiguous() for name, t in tensors.items()}, directory / "model.safetensors"
    )
    return directory
