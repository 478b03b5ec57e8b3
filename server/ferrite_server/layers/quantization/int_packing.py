"""Packing small unsigned integers into int32 words, as GPTQ and AWQ checkpoints store them.

A word holds 32 // bits values; value i of a group of consecutive values along the packed dim
sits at bits [bits * slot, bits * (slot + 1)) where slot = i (sequential order: GPTQ) or the
position of i in AWQ's interleaved order (AWQ_ORDER[slot] = i).

    GPTQ qweight [in / pack, out]   packed along the input dim, sequential
    GPTQ qzeros  [groups, out / pack] packed along the output dim, sequential
    AWQ  qweight [in, out / 8]      packed along the output dim, AWQ order (4 bits)
    AWQ  qzeros  [groups, out / 8]  same as its qweight
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# AWQ's GEMM kernels interleave a word's eight 4-bit values: slot s holds column AWQ_ORDER[s].
AWQ_ORDER: tuple[int, ...] = (0, 2, 4, 6, 1, 3, 5, 7)
_WORD_BITS = 32


def pack_factor(bits: int) -> int:
    if bits not in (2, 4, 8):
        raise ValueError(f"{bits}-bit values do not pack evenly into int32 words (2, 4 or 8)")
    return _WORD_BITS // bits


def _slot_of_value(bits: int, order: Sequence[int] | None) -> list[int]:
    """slot_of_value[i]: the slot value i of a group occupies."""
    factor = pack_factor(bits)
    if order is None:
        return list(range(factor))
    if sorted(order) != list(range(factor)):
        raise ValueError(f"order {tuple(order)} is not a permutation of {factor} slots")
    slots = [0] * factor
    for slot, value_index in enumerate(order):
        slots[value_index] = slot
    return slots


def pack_int32(
    values: torch.Tensor, bits: int, dim: int, order: Sequence[int] | None = None
) -> torch.Tensor:
    """Pack unsigned `bits`-bit integers along `dim` into int32 words (dim shrinks by 32/bits)."""
    factor = pack_factor(bits)
    if values.shape[dim] % factor != 0:
        raise ValueError(f"dim {dim} of size {values.shape[dim]} is not a multiple of {factor}")
    if int(values.min()) < 0 or int(values.max()) >= 1 << bits:
        raise ValueError(f"values must lie in [0, {1 << bits})")
    moved = values.to(torch.int64).movedim(dim, -1)
    grouped = moved.reshape(*moved.shape[:-1], -1, factor)  # [..., words, factor]
    shifts = torch.tensor([bits * slot for slot in _slot_of_value(bits, order)], dtype=torch.int64)
    words = (grouped << shifts.to(grouped.device)).sum(dim=-1)  # disjoint bits: sum == or
    words = torch.where(words >= 1 << 31, words - (1 << 32), words)  # two's complement int32
    return words.to(torch.int32).movedim(-1, dim).contiguous()


def unpack_int32(
    packed: torch.Tensor, bits: int, dim: int, order: Sequence[int] | None = None
) -> torch.Tensor:
    """Inverse of pack_int32: int32 values in [0, 2**bits), dim grows by 32/bits."""
    factor = pack_factor(bits)
    moved = packed.movedim(dim, -1)
    slots = _slot_of_value(bits, order)
    shifts = torch.tensor([bits * slot for slot in slots], dtype=torch.int32, device=packed.device)
    values = (moved.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)  # [..., words, factor]
    values = values.reshape(*moved.shape[:-1], moved.shape[-1] * factor)
    return values.movedim(-1, dim)
