"""One step's model inputs: concatenated tokens, positions, attention metadata, sample rows.

Sequences are laid end to end without padding (varlen): sequence s owns rows
query_start_loc[s] .. query_start_loc[s+1] of every [T, ...] tensor. Its tokens sit at
positions start_position .. end_position-1, and token p's K/V go to slot
block_table[p // block_size] * block_size + p % block_size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Protocol

import torch

from ferrite_server.layers.attention.backend import AttentionMetadata
from ferrite_server.layers.lora import NO_ADAPTER, LoraBatch


class ForwardSequence(Protocol):
    """What the inputs builder needs of a sequence (see step_plan.ScheduledSequence)."""

    @property
    def input_ids(self) -> tuple[int, ...]: ...

    @property
    def start_position(self) -> int: ...

    @property
    def block_table(self) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class ForwardInputs:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    attn_metadata: AttentionMetadata
    # Host-side row ranges: sequence s owns rows row_starts[s] .. row_starts[s+1].
    row_starts: tuple[int, ...]

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]

    def last_row(self, seq_index: int) -> int:
        return self.row_starts[seq_index + 1] - 1


def slot_mapping_for(
    block_table: Sequence[int], start_position: int, num_tokens: int, block_size: int
) -> list[int]:
    """Cache slots of positions start_position .. start_position + num_tokens - 1."""
    return [
        block_table[position // block_size] * block_size + position % block_size
        for position in range(start_position, start_position + num_tokens)
    ]


def build_forward_inputs(
    sequences: Sequence[ForwardSequence], block_size: int, device: torch.device
) -> ForwardInputs:
    """Concatenate the sequences' tokens and describe them for attention."""
    input_ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    row_starts = [0]
    seq_lens: list[int] = []
    block_rows: list[list[int]] = []
    # A sequence type without adapters (warmup, tests) runs the base model.
    adapters = [getattr(sequence, "adapter_index", NO_ADAPTER) for sequence in sequences]
    for sequence in sequences:
        num_tokens = len(sequence.input_ids)
        seq_len = sequence.start_position + num_tokens
        input_ids.extend(sequence.input_ids)
        positions.extend(range(sequence.start_position, seq_len))
        slots.extend(
            slot_mapping_for(sequence.block_table, sequence.start_position, num_tokens, block_size)
        )
        row_starts.append(row_starts[-1] + num_tokens)
        seq_lens.append(seq_len)
        # Only the blocks the context covers: the router may send a longer table.
        block_rows.append(list(sequence.block_table[: -(-seq_len // block_size)]))
    width = max((len(row) for row in block_rows), default=0)
    padded_blocks = [row + [0] * (width - len(row)) for row in block_rows]
    query_lens = [end - start for start, end in pairwise(row_starts)]
    metadata = AttentionMetadata(
        query_start_loc=_to_device(row_starts, torch.int32, device),
        seq_lens=_to_device(seq_lens, torch.int32, device),
        block_tables=_to_device(padded_blocks, torch.int32, device).view(len(block_rows), width),
        slot_mapping=_to_device(slots, torch.int64, device),
        max_query_len=max(query_lens, default=0),
        max_seq_len=max(seq_lens, default=0),
        query_start_loc_cpu=tuple(row_starts),
        seq_lens_cpu=tuple(seq_lens),
        lora=LoraBatch.from_sequences(adapters, row_starts, device),
    )
    return ForwardInputs(
        input_ids=_to_device(input_ids, torch.int64, device),
        positions=_to_device(positions, torch.int64, device),
        attn_metadata=metadata,
        row_starts=tuple(row_starts),
    )


def _to_device(
    values: list[int] | list[list[int]], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    host = torch.tensor(values, dtype=dtype)
    if device.type == "cpu":
        return host
    # Pinned host memory makes the copy asynchronous, so building inputs overlaps GPU work.
    return host.pin_memory().to(device, non_blocking=True)
