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

    def finish_reason(
        self, state: RequestState, new_token_id: int, num_earlier_new_tokens: int = 0
    ) -> FinishReason:
        """Checked right after `new_token_id` was sampled (the state does not hold it yet),
        following `num_earlier_new_tokens` tokens of the same step (accepted speculation)."""
        stopping = state.params.stopping
        if not stopping.ignore_eos and new_token_id in self.eos_token_ids:
            return FinishReason.EOS
        # Generated tokens include those before a preemption, as max_new_tokens does.
        num_generated = state.num_generated_tokens + num_earlier_new_tokens + 1
        if num_generated >= stopping.max_new_tokens:
            return FinishReason.LENGTH
        # The new token would be computed at this position; none left.
        if len(state.token_ids) + num_earlier_new_tokens >= self.max_position_embeddings:
            return FinishReason.LENGTH
        return FinishReason.NONE
