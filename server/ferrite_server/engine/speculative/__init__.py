"""Speculative decoding in the shard: proposers that guess the next tokens of a decoding
request (ngram.py) and the verification that keeps exactly the tokens the model would have
produced (verify.py). The router reserves the KV slots (`num_lookahead_tokens`) and appends
whatever was accepted; the shard never keeps a proposal."""

from __future__ import annotations

from ferrite_server.config import SpeculativeMethodName
from ferrite_server.engine.batch_state import RequestState
from ferrite_server.engine.speculative.ngram import propose_ngram
from ferrite_server.engine.step_plan import Proposer


def _ngram_proposer(state: RequestState, max_proposed_tokens: int) -> tuple[int, ...]:
    return propose_ngram(state.token_ids, max_proposed_tokens)


def proposer_for(method: SpeculativeMethodName | None) -> Proposer | None:
    """The proposer of a `--speculative-method`; None: no speculation."""
    if method is None:
        return None
    if method == "ngram":
        return _ngram_proposer
    raise ValueError(f"unknown speculative method {method!r}")
