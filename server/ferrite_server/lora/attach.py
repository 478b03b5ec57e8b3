"""Loading `--lora-adapters` into a loaded model: each targeted projection of each decoder layer
gets a `LoraLinearWeights` holding every adapter's pair (this rank's slices), in the order the
adapters were given (a request's adapter index).

PEFT names the unfused projections (q_proj, ..., down_proj); ferrite fuses q/k/v into qkv_proj
and gate/up into gate_up_proj, so each PEFT module is one part of a ferrite layer. A pair that
does not fit the layer's shape comes from an adapter for another model, and is refused by name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from ferrite_server.config import LoraConfig
from ferrite_server.layers.linear import _Linear
from ferrite_server.layers.lora import LoraLinearWeights, LoraPart
from ferrite_server.lora.peft_adapter import (
    LoraAdapterError,
    LoraModule,
    PeftAdapter,
    load_peft_adapter,
)
from ferrite_server.lora.resolve import adapter_directory

logger = logging.getLogger(__name__)

# PEFT module -> (ferrite's layer under the decoder layer, part index in it)
_FUSED_PARTS = {
    "q_proj": ("self_attn.qkv_proj", 0),
    "k_proj": ("self_attn.qkv_proj", 1),
    "v_proj": ("self_attn.qkv_proj", 2),
    "o_proj": ("self_attn.o_proj", 0),
    "gate_proj": ("mlp.gate_up_proj", 0),
    "up_proj": ("mlp.gate_up_proj", 1),
    "down_proj": ("mlp.down_proj", 0),
}


@dataclass(frozen=True)
class _Target:
    layer: int
    path: str  # e.g. "self_attn.qkv_proj"


def load_adapters(config: LoraConfig, num_layers: int) -> list[PeftAdapter]:
    adapters = []
    for name, source in config.adapters:
        directory = adapter_directory(name, source, config.hub_cache_dir)
        adapter = load_peft_adapter(name, directory, config.max_rank, num_layers)
        logger.info(
            "LoRA adapter %r from %s: rank %d on %d projections (base model: %s)",
            name, directory, adapter.rank, len(adapter.modules), adapter.base_model or "not named",
        )
        adapters.append(adapter)
    return adapters


def attach_adapters(model: nn.Module, adapters: list[PeftAdapter]) -> int:
    """Give every targeted layer of `model` its adapters' weights; returns their bytes."""
    max_rank = max(adapter.rank for adapter in adapters)
    by_target: dict[_Target, list[tuple[int, LoraModule]]] = {}
    for index, adapter in enumerate(adapters):
        for module in adapter.modules:
            path, _ = _FUSED_PARTS[module.module]
            by_target.setdefault(_Target(module.layer, path), []).append((index, module))
    total_bytes = 0
    for target, modules in by_target.items():
        linear = _linear_of(model, target, adapters[modules[0][0]].name)
        weights = _empty_weights(linear, len(adapters), max_rank)
        for index, module in modules:
            _set_pair(weights, linear, index, adapters[index].name, module)
        linear.lora = weights
        total_bytes += sum(t.numel() * t.element_size() for t in weights.buffers())
    return total_bytes


def _linear_of(model: nn.Module, target: _Target, adapter_name: str) -> _Linear:
    full_path = f"model.layers.{target.layer}.{target.path}"
    try:
        module = model.get_submodule(full_path)
    except AttributeError:
        module = None
    if not isinstance(module, _Linear):
        raise LoraAdapterError(
            adapter_name, f"this model has no {full_path} linear layer to apply LoRA to"
        )
    return module


def _empty_weights(linear: _Linear, num_adapters: int, max_rank: int) -> LoraLinearWeights:
    shape = linear.shape
    starts, parts = 0, []
    for length in shape.local_output_sizes:
        parts.append(LoraPart(output_start=starts, output_size=length))
        starts += length
    return LoraLinearWeights(
        tuple(parts), num_adapters, max_rank, shape.local_input_size, shape.dtype, shape.device
    )


def _set_pair(
    weights: LoraLinearWeights, linear: _Linear, adapter: int, name: str, module: LoraModule
) -> None:
    """Adapter `adapter`'s pair for `module`, this rank's slice of it: a column-parallel layer
    keeps its part's output rows of B, a row-parallel one its input columns of A (as the base
    weight is sliced)."""
    shape = linear.shape
    _, part = _FUSED_PARTS[module.module]
    expected_in, expected_out = shape.input_size, shape.output_sizes[part]
    if module.lora_a.shape[1] != expected_in or module.lora_b.shape[0] != expected_out:
        raise LoraAdapterError(
            name,
            f"layer {module.layer} {module.module}: lora_A {tuple(module.lora_a.shape)} / lora_B "
            f"{tuple(module.lora_b.shape)} do not fit its {expected_in} inputs and "
            f"{expected_out} outputs (an adapter for another base model?)",
        )
    lora_a, lora_b = module.lora_a, module.lora_b
    if shape.split == "row":
        width = shape.local_input_size
        lora_a = lora_a[:, shape.tp.rank * width : (shape.tp.rank + 1) * width]
    else:
        start, length = shape.part_slices[part]
        lora_b = lora_b[start : start + length]
    device, dtype = weights.lora_a.device, weights.lora_a.dtype
    weights.set_adapter(adapter, part, lora_a.to(device, dtype), lora_b.to(device), module.scale)
