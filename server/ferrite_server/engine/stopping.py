"""When the shard stops a request: EOS (unless ignore_eos), max_new_tokens, or the end of the
model's positions. Stop strings are text and belong to the router."""

from __future__ import annotations

from dataclasses import dataclass

from ferrite_server.engine.batch_state import RequestState
from ferrite_server.engine.types import FinishReason


@dataclass(frozen=True)
class StopCriteria:
    eos_token_ids: frozenset[int]
    max_position_embeddings: int

    def finish_reason(self, state: RequestState, new_token_id: int) -> FinishReason:
        """Checked right after `new_token_id` was sampled (the state does not hold it yet)."""
        stopping = state.params.stopping
        if not stopping.ignore_eos and new_token_id in self.eos_token_ids:
            return FinishReason.EOS
        # Generated tokens include those before a preemption, as max_new_tokens does.
        if state.num_generated_tokens + 1 >= stopping.max_new_tokens:
            return FinishReason.LENGTH
        # The new token would be computed at position num_computed_tokens; none left.
        if state.num_computed_tokens >= self.max_position_embeddings:
            return FinishReason.LENGTH
        return FinishReason.NONE
