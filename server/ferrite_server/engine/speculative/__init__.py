"""Speculative decoding in the shard: proposers that guess the next tokens of a decoding
request — prompt lookup (ngram.py) or a draft model (draft.py) — and the verification in the
target's one forward of the step that keeps only what the target itself would produce
(verify.py; rejection.py for a draft's sampled proposals). The router reserves the KV slots
(`num_lookahead_tokens`) and appends whatever was accepted; the shard never keeps a proposal."""

from __future__ import annotations

from ferrite_server.config import SpeculativeMethodName
from ferrite_server.engine.batch_state import RequestState
from ferrite_server.engine.speculative.ngram import propose_ngram
from ferrite_server.engine.step_plan import Proposer


def _ngram_proposer(state: RequestState, max_proposed_tokens: int) -> tuple[int, ...]:
    return propose_ngram(state.token_ids, max_proposed_tokens)


def proposer_for(method: SpeculativeMethodName | None) -> Proposer | None:
    """The per-request proposer of a `--speculative-method` that plans proposals with the
    step; None: no speculation, or a draft model (it proposes for the batch after planning)."""
    if method is None or method == "draft":
        return None
    if method == "ngram":
        return _ngram_proposer
    raise ValueError(f"unknown speculative method {method!r}")
