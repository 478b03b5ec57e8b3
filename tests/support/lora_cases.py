"""Random multi-adapter LoRA layers and mixed batches, with a per-token reference of PEFT's
math (y = base + scale * B (A x)), for the torch paths and the Triton kernel."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ferrite_server.layers.lora import LoraBatch, LoraLinearWeights, LoraPart

INPUT_SIZE = 24
PART_SIZES = (8, 4, 4)  # a qkv-like fused layer
# adapter -> rank and the parts it targets (adapter 1 leaves part 1 alone)
ADAPTERS = ((2, (0, 1, 2)), (5, (0, 2)), (3, (0, 1, 2)))
MAX_RANK = 5


@dataclass
class LoraCase:
    layer: LoraLinearWeights
    # adapter -> part -> (A [r, in], B [out_part, r], scale)
    pairs: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor, float]]]


def random_layer(dtype: torch.dtype = torch.float32, seed: int = 0) -> LoraCase:
    generator = torch.Generator().manual_seed(seed)
    starts = [sum(PART_SIZES[:index]) for index in range(len(PART_SIZES))]
    parts = tuple(LoraPart(start, size) for start, size in zip(starts, PART_SIZES, strict=True))
    layer = LoraLinearWeights(parts, len(ADAPTERS), MAX_RANK, INPUT_SIZE, dtype, torch.device("cpu"))
    pairs: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor, float]]] = {}
    for adapter, (rank, targeted) in enumerate(ADAPTERS):
        pairs[adapter] = {}
        for part in targeted:
            lora_a = torch.randn(rank, INPUT_SIZE, generator=generator)
            lora_b = torch.randn(PART_SIZES[part], rank, generator=generator)
            scale = 16.0 / rank
            layer.set_adapter(adapter, part, lora_a.to(dtype), lora_b.to(dtype), scale)
            pairs[adapter][part] = (lora_a, lora_b, scale)
    return LoraCase(layer, pairs)


def reference_delta(case: LoraCase, x: torch.Tensor, token_adapters: list[int]) -> torch.Tensor:
    """Token by token, part by part, in float64: what PEFT adds to the base output."""
    delta = torch.zeros(x.shape[0], sum(PART_SIZES), dtype=torch.float64)
    starts = [sum(PART_SIZES[:index]) for index in range(len(PART_SIZES))]
    for token, adapter in enumerate(token_adapters):
        for part, (lora_a, lora_b, scale) in case.pairs.get(adapter, {}).items():
            row = x[token].double()
            columns = slice(starts[part], starts[part] + PART_SIZES[part])
            delta[token, columns] = scale * (lora_b.double() @ (lora_a.double() @ row))
    return delta


def mixed_batch(row_counts: list[int], adapters: list[int]) -> LoraBatch:
    row_starts = [0]
    for count in row_counts:
        row_starts.append(row_starts[-1] + count)
    batch = LoraBatch.from_sequences(adapters, row_starts, torch.device("cpu"))
    assert batch is not None
    return batch
