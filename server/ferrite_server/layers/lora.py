"""Batched LoRA: many adapters applied in one forward, each token by its request's adapter.

A linear layer that PEFT adapters target holds every loaded adapter's low-rank pair, stacked
and zero-padded to the largest loaded rank R (`LoraLinearWeights`):

    y[t] = base(x)[t] + (x[t] @ A_i^T) @ B_i^T      i = the adapter of token t (-1: none)

with PEFT's scaling (lora_alpha / r, or / sqrt(r) with rsLoRA) folded into B at load. A fused
layer (qkv, gate_up) has one (A, B) pair per part: the A's are stacked along the rank dim, so
one "shrink" x @ A^T gives every part's [T, R] slice, and each part's "expand" writes its own
output columns. Tensor parallelism slices like the base weight: a column-parallel layer keeps
its output rows of B (A whole), a row-parallel one its input columns of A (B whole) and adds
its partial delta before the layer's all-reduce, which then sums the shrink over ranks too.

Which adapter each token uses travels in the forward's explicit inputs (`LoraBatch`, in the
attention metadata), never in module state, so a CUDA graph replays it from a static buffer.
Three ways to compute the same delta:
- CPU, rows grouped by adapter (the engine orders sequences by adapter): one shrink and one
  expand per part per adapter run, on views; the fastest on CPU (bench/lora_decode.py);
- CUDA: the Triton gather kernels (kernels/lora_shrink_expand.py), from the device indices;
- anywhere, from the device indices only (a graph stand-in on CPU): gather each token's
  adapter and bmm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

NO_ADAPTER = -1  # token adapter index of base-model tokens


@dataclass(frozen=True)
class LoraBatch:
    """Which adapter each of a step's T tokens runs with."""

    token_adapters: torch.Tensor  # [T] int32 on device: adapter index, NO_ADAPTER for none
    # Host: (adapter index, first row, end row) of each run of consecutive rows of one adapter,
    # base-model rows left out. None when only the device tensor is known (graph replays).
    runs: tuple[tuple[int, int, int], ...] | None = None

    @classmethod
    def from_sequences(
        cls, adapters: list[int], row_starts: list[int], device: torch.device
    ) -> LoraBatch | None:
        """Sequence s (adapter adapters[s]) owns rows row_starts[s] .. row_starts[s+1].
        None when no sequence has an adapter: the layers then skip LoRA entirely."""
        if all(adapter == NO_ADAPTER for adapter in adapters):
            return None
        token_adapters: list[int] = []
        runs: list[list[int]] = []
        for index, adapter in enumerate(adapters):
            start, end = row_starts[index], row_starts[index + 1]
            token_adapters.extend([adapter] * (end - start))
            if adapter == NO_ADAPTER or end == start:
                continue
            if runs and runs[-1][0] == adapter and runs[-1][2] == start:
                runs[-1][2] = end
            else:
                runs.append([adapter, start, end])
        host = torch.tensor(token_adapters, dtype=torch.int32)
        on_device = host
        if device.type != "cpu":
            on_device = host.pin_memory().to(device, non_blocking=True)
        return cls(on_device, tuple((a, s, e) for a, s, e in runs))


@dataclass(frozen=True)
class LoraPart:
    """One fused part of a layer: its output columns and its slice of the shrink."""

    output_start: int  # first output feature of this part on this rank
    output_size: int  # its output features on this rank


class LoraLinearWeights(nn.Module):
    """Every adapter's LoRA pair for one linear layer (this rank's slices), zero where an
    adapter does not target the layer or one of its parts."""

    def __init__(
        self,
        parts: tuple[LoraPart, ...],
        num_adapters: int,
        max_rank: int,
        input_size: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.parts = parts
        self.rank = max_rank
        output_size = sum(part.output_size for part in parts)
        shrink_shape = (num_adapters, len(parts) * max_rank, input_size)
        # Buffers, not parameters: counted in the model's memory, never trained or loaded
        # from the base checkpoint.
        self.register_buffer("lora_a", torch.zeros(shrink_shape, dtype=dtype, device=device))
        self.register_buffer(
            "lora_b", torch.zeros((num_adapters, output_size, max_rank), dtype=dtype, device=device)
        )
        # [output_size] int32: the shrink column where each output row's part starts.
        part_columns = [
            index * max_rank for index, part in enumerate(parts) for _ in range(part.output_size)
        ]
        self.register_buffer(
            "row_shrink_offsets", torch.tensor(part_columns, dtype=torch.int32, device=device)
        )

    def set_adapter(
        self, adapter: int, part: int, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float
    ) -> None:
        """Adapter `adapter`'s pair for `part`: lora_a [r, in_local], lora_b [out_local, r]."""
        rank = lora_a.shape[0]
        first_row = part * self.rank
        self.lora_a[adapter, first_row : first_row + rank].copy_(lora_a)
        start = self.parts[part].output_start
        rows = slice(start, start + self.parts[part].output_size)
        self.lora_b[adapter, rows, :rank].copy_((lora_b.float() * scale).to(self.lora_b.dtype))

    def add_to(self, y: torch.Tensor, x: torch.Tensor, batch: LoraBatch) -> torch.Tensor:
        """y [T, out_local] += each token's adapter delta of x [T, in_local]; returns y."""
        if x.is_cuda:
            from ferrite_server.kernels.lora_shrink_expand import lora_shrink_expand

            lora_shrink_expand(
                y, x, self.lora_a, self.lora_b, self.row_shrink_offsets, batch.token_adapters
            )
            return y
        if batch.runs is not None:
            return self._add_by_runs(y, x, batch.runs)
        return add_gathered(y, x, self.lora_a, self.lora_b, self.parts, batch.token_adapters)

    def _add_by_runs(
        self, y: torch.Tensor, x: torch.Tensor, runs: tuple[tuple[int, int, int], ...]
    ) -> torch.Tensor:
        for adapter, start, end in runs:
            shrunk = x[start:end] @ self.lora_a[adapter].T  # [t, parts * R]
            for index, part in enumerate(self.parts):
                columns = slice(part.output_start, part.output_start + part.output_size)
                part_shrunk = shrunk[:, index * self.rank : (index + 1) * self.rank]  # [t, R]
                y[start:end, columns].addmm_(part_shrunk, self.lora_b[adapter, columns].T)
        return y


def add_gathered(
    y: torch.Tensor,  # [T, out]
    x: torch.Tensor,  # [T, in]
    lora_a: torch.Tensor,  # [N, parts * R, in]
    lora_b: torch.Tensor,  # [N, out, R]
    parts: tuple[LoraPart, ...],
    token_adapters: torch.Tensor,  # [T] int32, -1: none
) -> torch.Tensor:
    """The delta from the device indices alone: gather each token's adapter, then bmm."""
    rank = lora_b.shape[2]
    has_adapter = token_adapters >= 0  # [T]
    index = token_adapters.long().clamp(min=0)
    shrunk = torch.bmm(lora_a[index], x.unsqueeze(-1)).squeeze(-1)  # [T, parts * R]
    shrunk = shrunk * has_adapter.unsqueeze(-1).to(shrunk.dtype)
    for part_index, part in enumerate(parts):
        columns = slice(part.output_start, part.output_start + part.output_size)
        part_shrunk = shrunk[:, part_index * rank : (part_index + 1) * rank, None]  # [T, R, 1]
        y[:, columns] += torch.bmm(lora_b[index, columns], part_shrunk).squeeze(-1)
    return y
