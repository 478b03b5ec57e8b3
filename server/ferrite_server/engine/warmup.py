"""Warmup: run the largest step the router promised to send, measure it, size the KV cache.

The warmup forward uses a temporary KV cache just large enough for its own tokens, then the
sampler runs on max_batch_size rows with the most expensive settings (nucleus sampling, top-n
alternatives), so its peak memory is counted too (TGI's "OOM after a successful warmup").

On CPU nothing is measured (see memory.py), and the forward is capped at CPU_WARMUP_MAX_TOKENS:
it only proves the path works, and a full-size CPU forward would add seconds to start-up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ferrite_server.engine.forward_inputs import build_forward_inputs
from ferrite_server.engine.kv_cache import allocate_kv_cache
from ferrite_server.engine.memory import measure_peak_activation_bytes
from ferrite_server.engine.model_runner import ModelRunner
from ferrite_server.engine.sampling import SequenceSamplingState, sample
from ferrite_server.engine.types import SamplingParams

CPU_WARMUP_MAX_TOKENS = 512
_WARMUP_SAMPLING = SamplingParams(do_sample=True, temperature=0.7, top_k=50, top_p=0.9)


@dataclass(frozen=True)
class WarmupShape:
    max_batch_prefill_tokens: int
    max_batch_size: int
    max_total_tokens: int
    max_top_n_tokens: int


@dataclass(frozen=True)
class _WarmupSequence:
    input_ids: tuple[int, ...]
    start_position: int
    block_table: tuple[int, ...]
    # With LoRA adapters loaded, the warmup runs adapter 0, so the LoRA activations are
    # measured too; -1: the base model.
    adapter_index: int = -1


def warmup_sequences(
    num_tokens: int, max_sequence_tokens: int, block_size: int, adapter_index: int = -1
) -> list[_WarmupSequence]:
    """num_tokens prompt tokens as sequences of at most max_sequence_tokens, on fresh blocks."""
    sequences: list[_WarmupSequence] = []
    next_block = 0
    remaining = num_tokens
    while remaining > 0:
        length = min(remaining, max_sequence_tokens)
        num_blocks = -(-length // block_size)
        block_table = tuple(range(next_block, next_block + num_blocks))
        sequences.append(_WarmupSequence((0,) * length, 0, block_table, adapter_index))
        next_block += num_blocks
        remaining -= length
    return sequences


def run_warmup_step(runner: ModelRunner, shape: WarmupShape, block_size: int) -> int:
    """Run the largest step; returns its peak activation bytes (0 on CPU)."""
    device = runner.facts.device
    num_tokens = shape.max_batch_prefill_tokens
    if device.type != "cuda":
        num_tokens = min(num_tokens, CPU_WARMUP_MAX_TOKENS)
    adapter_index = 0 if runner.facts.lora_adapters else -1
    sequences = warmup_sequences(
        max(num_tokens, 1), shape.max_total_tokens, block_size, adapter_index
    )
    num_blocks = sum(len(sequence.block_table) for sequence in sequences)
    spec = runner.kv_cache_spec(block_size)
    # Allocated outside the measurement: it stands in for KV blocks, not activations.
    kv_caches = allocate_kv_cache(spec, num_blocks, device)
    states = [
        SequenceSamplingState(params=_WARMUP_SAMPLING, prompt_ids=(0,), generated_ids=(), seed=0)
        for _ in range(shape.max_batch_size)
    ]

    def largest_step() -> None:
        inputs = build_forward_inputs(sequences, block_size, device)
        hidden = runner.forward(inputs, kv_caches)  # [T, H]
        rows = torch.arange(shape.max_batch_size, device=device) % hidden.shape[0]
        logits = runner.compute_logits(hidden[rows])  # [max_batch_size, V]
        sample(logits, states, shape.max_top_n_tokens)

    _, peak_bytes = measure_peak_activation_bytes(largest_step, device)
    return peak_bytes
