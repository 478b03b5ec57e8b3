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

    def finish_reason(self, state: RequestState) -> FinishReason:
        """Checked right after a token was appended to state.generated_ids."""
        stopping = state.params.stopping
        if not stopping.ignore_eos and state.generated_ids[-1] in self.eos_token_ids:
            return FinishReason.EOS
        # generated_ids includes tokens generated before a preemption, as max_new_tokens does.
        if state.num_generated_tokens >= stopping.max_new_tokens:
            return FinishReason.LENGTH
        # The new token would be computed at position num_computed_tokens; none left.
        if state.num_computed_tokens >= self.max_position_embeddings:
            return FinishReason.LENGTH
        return FinishReason.NONE
