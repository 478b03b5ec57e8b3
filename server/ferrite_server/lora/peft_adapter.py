"""Reading one PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) and refusing,
by the adapter's name, anything ferrite cannot apply exactly as PEFT would.

Served: plain LoRA on the attention and MLP projections of the decoder layers (q/k/v/o,
gate/up/down), any rank up to --max-lora-rank, per-module ranks and alphas (`rank_pattern`,
`alpha_pattern`), rsLoRA scaling, `fan_in_fan_out` (it only describes how a Conv1D base weight
is stored; lora_A / lora_B are plain Linear weights either way). Refused: DoRA, LoRA biases,
`modules_to_save` / trainable tokens (they replace whole modules), other adapter types, layer
replication, targets outside those projections (embeddings, the LM head, experts, ...).
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ferrite_server.engine.errors import EngineError

logger = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
SUPPORTED_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# A target inside a decoder layer: `...layers.<i>.<self_attn|mlp>.<module>`.
_MODULE_PATH = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)$")
_WEIGHT_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[\w-]+)?\.weight$")
# Config switches that change the math or add weights ferrite does not apply.
_REFUSED_FLAGS = {
    "use_dora": "DoRA (use_dora)",
    "lora_bias": "LoRA biases (lora_bias)",
    "use_qalora": "QA-LoRA (use_qalora)",
}
_REFUSED_LISTS = {
    "modules_to_save": "modules_to_save (whole replaced modules)",
    "trainable_token_indices": "trainable_token_indices (trained embedding rows)",
    "layer_replication": "layer_replication",
    "target_parameters": "target_parameters (LoRA on raw parameters)",
    # Variants whose forward differs from y + scale * B A x:
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "arrow_config": "Arrow routing (arrow_config)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    "kasa_config": "KaSA (kasa_config)",
    "monteclora_config": "MonteCLoRA (monteclora_config)",
}


class LoraAdapterError(EngineError):
    """An adapter that cannot be served; the message names it and says why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"LoRA adapter {name!r}: {reason}")


@dataclass(frozen=True)
class LoraModule:
    """One targeted projection: layer index, PEFT module name, its pair and PEFT's scale."""

    layer: int
    module: str  # one of SUPPORTED_MODULES
    lora_a: torch.Tensor  # [r, in]
    lora_b: torch.Tensor  # [out, r]
    scale: float  # lora_alpha / r (rsLoRA: / sqrt(r))

    @property
    def rank(self) -> int:
        return self.lora_a.shape[0]


@dataclass(frozen=True)
class PeftAdapter:
    name: str
    directory: Path
    modules: tuple[LoraModule, ...]
    base_model: str  # base_model_name_or_path, as the config says (may be empty)

    @property
    def rank(self) -> int:
        return max((module.rank for module in self.modules), default=0)


def load_peft_adapter(name: str, directory: Path, max_rank: int, num_layers: int) -> PeftAdapter:
    """Read and check the adapter in `directory` for a base model of `num_layers` layers."""
    config = _read_config(name, directory)
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        found = ", ".join(sorted(p.name for p in directory.iterdir())) or "nothing"
        raise LoraAdapterError(name, f"{directory} has no {WEIGHTS_NAME} (it holds: {found})")
    from safetensors.torch import load_file

    pairs = _pairs_by_module(name, load_file(str(weights_path)))
    modules = tuple(
        _module(name, path, lora_a, lora_b, config, max_rank, num_layers)
        for path, (lora_a, lora_b) in sorted(pairs.items())
    )
    if not modules:
        raise LoraAdapterError(name, f"{weights_path} holds no LoRA weights")
    base_model = str(config.get("base_model_name_or_path") or "")
    return PeftAdapter(name=name, directory=directory, modules=modules, base_model=base_model)


def _read_config(name: str, directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise LoraAdapterError(name, f"{directory} is not a directory")
    path = directory / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        reason = f"{directory} has no {CONFIG_NAME} (not a PEFT adapter)"
        raise LoraAdapterError(name, reason) from None
    except (OSError, ValueError) as error:
        raise LoraAdapterError(name, f"cannot read {path}: {error}") from error
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise LoraAdapterError(name, f"peft_type {config.get('peft_type')!r} is not LORA")
    for key, what in _REFUSED_FLAGS.items():
        if config.get(key):
            raise LoraAdapterError(name, f"{what} is not supported")
    for key, what in _REFUSED_LISTS.items():
        if config.get(key):
            raise LoraAdapterError(name, f"{what} is not supported")
    targets = config.get("target_modules")
    if isinstance(targets, list):
        for target in targets:
            if target.rsplit(".", 1)[-1] not in SUPPORTED_MODULES:
                raise LoraAdapterError(name, _unsupported_target(target))
    return config


def _unsupported_target(target: str) -> str:
    return (
        f"targets {target!r}, which ferrite cannot apply LoRA to (supported: "
        f"{', '.join(SUPPORTED_MODULES)} of the decoder layers)"
    )


def _pairs_by_module(
    name: str, tensors: dict[str, torch.Tensor]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _WEIGHT_KEY.match(key)
        if match is None:  # lora_embedding_*, magnitude vectors, biases, whole modules
            raise LoraAdapterError(name, f"weight {key!r} is not a LoRA A/B matrix ferrite applies")
        found.setdefault(match["module"], {})[match["which"]] = tensor
    pairs = {}
    for module, pair in found.items():
        if set(pair) != {"A", "B"}:
            raise LoraAdapterError(name, f"{module} has lora_{''.join(pair)} without its partner")
        pairs[module] = (pair["A"], pair["B"])
    return pairs


def _module(
    name: str,
    path: str,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    config: dict[str, Any],
    max_rank: int,
    num_layers: int,
) -> LoraModule:
    match = _MODULE_PATH.search(path)
    if match is None or match[2] not in SUPPORTED_MODULES:
        raise LoraAdapterError(name, _unsupported_target(path))
    layer = int(match[1])
    if layer >= num_layers:
        raise LoraAdapterError(
            name, f"{path} is in layer {layer}, but the base model has {num_layers} layers "
            "(an adapter for another model?)"
        )
    rank = lora_a.shape[0]
    if lora_a.dim() != 2 or lora_b.dim() != 2 or lora_b.shape[1] != rank:
        raise LoraAdapterError(
            name, f"{path}: lora_A {tuple(lora_a.shape)} and lora_B {tuple(lora_b.shape)} are "
            "not a [r, in] / [out, r] pair"
        )
    if rank > max_rank:
        raise LoraAdapterError(name, f"rank {rank} ({path}) is above --max-lora-rank {max_rank}")
    alpha_pattern = config.get("alpha_pattern") or {}
    alpha = float(_pattern_value(alpha_pattern, path, config.get("lora_alpha", 8)))
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    return LoraModule(layer=layer, module=match[2], lora_a=lora_a, lora_b=lora_b, scale=scale)


def _pattern_value(patterns: dict[str, Any], module_path: str, default: Any) -> Any:
    """PEFT's rule for rank_pattern / alpha_pattern: the first key that matches the end of
    the module's name (as a regex)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module_path):
            return value
    return default
