"""One constrained request's grammar state. It follows the request's sequence, not its
sampling: a token it allowed is consumed only once it is in the sequence (sent back by the
router, or appended by the shard when the router says append_generated_tokens; see
batch_state.py), just before the next token is chosen (token_choice.py). So both ways of
appending land in the same state, and a recomputed request after a preemption or a shard
restart replays its generated tokens into a fresh matcher and lands where it was."""

from __future__ import annotations

from collections.abc import Sequence

import llguidance
import llguidance.torch
import torch


class RequestGrammar:
    def __init__(self, matcher: llguidance.LLMatcher, eos_token_ids: Sequence[int]) -> None:
        self._matcher = matcher
        self._num_consumed_tokens = 0
        self._eos_token_ids = tuple(eos_token_ids)

    def follow(self, generated_ids: Sequence[int]) -> None:
        """Consume the generated tokens the matcher has not seen yet."""
        new_ids = list(generated_ids[self._num_consumed_tokens :])
        self._num_consumed_tokens = len(generated_ids)
        if new_ids and not self._matcher.is_error():
            # A refused token (only a router that appended tokens of its own could send one)
            # leaves the matcher in error: fill_mask then allows EOS only, and the engine
            # fails the request with error().
            self._matcher.consume_tokens(new_ids)

    def error(self) -> str | None:
        """Why the matcher stopped, or None. A grammar that compiled can still exceed the
        engine's limits later (llguidance checks only the first token's mask at compile time,
        e.g. "Current row has 16500 items; max is 2000"): the request must then fail with the
        reason instead of ending quietly with an EOS and invalid output."""
        if not self._matcher.is_error():
            return None
        return f"the grammar engine gave up on this request's grammar: {self._matcher.get_error()}"

    def fill_mask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed-token bits of the next token into bitmask[row] (CPU int32)."""
        if self._matcher.is_error():
            bitmask[row].zero_()
            for token_id in self._eos_token_ids:
                bitmask[row, token_id // 32] |= _bit(token_id % 32)
            return
        llguidance.torch.fill_next_token_bitmask(self._matcher, bitmask, row)


def _bit(index: int) -> int:
    """Bit `index` of an int32 word, as the signed value torch stores."""
    return -(1 << 31) if index == 31 else 1 << index
