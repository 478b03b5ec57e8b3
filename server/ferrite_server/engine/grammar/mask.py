"""The allowed-token bitmask of a batch, built on the host by the requests' matchers and
unpacked on the logits' device (one copy; rows without a grammar allow everything)."""

from __future__ import annotations

from collections.abc import Sequence

import llguidance.torch
import torch

from ferrite_server.engine.grammar.matcher import RequestGrammar


def allowed_tokens(
    grammars: Sequence[RequestGrammar | None], vocab_size: int, device: torch.device
) -> torch.Tensor | None:
    """[N, vocab_size] bool on `device` (True: allowed), or None when no row is constrained."""
    if all(grammar is None for grammar in grammars):
        return None
    bitmask = llguidance.torch.allocate_token_bitmask(len(grammars), vocab_size)  # [N, W] -1
    for row, grammar in enumerate(grammars):
        if grammar is not None:
            grammar.fill_mask(bitmask, row)
    return unpack_bitmask(bitmask.to(device, non_blocking=True), vocab_size)


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """bitmask [N, W] int32 (bit j of word w: token 32 w + j) -> [N, vocab_size] bool."""
    shifts = torch.arange(32, dtype=torch.int32, device=bitmask.device)  # [32]
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # [N, W, 32]
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab_size].bool()
