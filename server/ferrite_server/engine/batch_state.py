"""Per-request state the shard keeps between steps, and the set of live requests.

The router owns every request's tokens and KV blocks. The shard holds a copy of what it was
sent (a new request's whole history, then each step's appended tokens and block ids). A token
it samples becomes part of the history when the router sends it back, or, with asynchronous
scheduling, when the router tells it to append it itself (RunningRequest.append_generated_tokens:
the router planned the step before it saw that token); the shard never appends unasked.
Beside that copy it keeps only what computing needs: how many tokens are in the KV cache, the
parameters, the resolved seed and the tokens the request's most recent step generated.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from ferrite_server.engine.grammar.matcher import RequestGrammar
from ferrite_server.engine.types import RequestParams


@dataclass
class RequestState:
    request_id: int
    params: RequestParams
    seed: int  # params.sampling.seed, or one the engine drew at creation
    # The whole sequence as the router sent it: the prompt (cached part included), then the
    # generated tokens. The last one is the next decode's input.
    token_ids: list[int] = field(default_factory=list)
    num_prompt_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    # [hidden] float: the previous chunk's last hidden state, kept when prompt logprobs are
    # wanted, because it predicts the next chunk's first token.
    pending_hidden: torch.Tensor | None = None
    # Structured output: the matcher that masks this request's next token; None: unconstrained.
    grammar: RequestGrammar | None = None
    # Index of its LoRA adapter among the shard's (ModelFacts.lora_adapters); -1: none.
    adapter_index: int = -1
    # Draft-model speculation: the draft's K/V was written for positions below this one
    # (speculative/draft.py; rejected proposals' slots among them are stale).
    draft_written_end: int = 0
    # Tokens the request's most recent step generated (its Generation.tokens; () for a prompt
    # chunk that was not the last). Set when the engine commits a step, cleared when the next
    # step of the request is planned: a step that says append_generated_tokens appends them,
    # so a request with none to append (or whose tokens were already appended) is rejected.
    last_generated_ids: tuple[int, ...] = ()

    @property
    def prompt_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def generated_ids(self) -> list[int]:
        """Tokens generated so far (including those before a preemption)."""
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_generated_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens


class BatchState:
    """The live requests, by id."""

    def __init__(self) -> None:
        self._requests: dict[int, RequestState] = {}

    def __len__(self) -> int:
        return len(self._requests)

    def __contains__(self, request_id: int) -> bool:
        return request_id in self._requests

    def __iter__(self) -> Iterator[RequestState]:
        return iter(self._requests.values())

    def get(self, request_id: int) -> RequestState | None:
        return self._requests.get(request_id)

    def add(self, state: RequestState) -> None:
        self._requests[state.request_id] = state

    def forget(self, request_id: int) -> None:
        self._requests.pop(request_id, None)

    def keep_only(self, request_ids: Iterable[int]) -> None:
        keep = set(request_ids)
        self._requests = {rid: s for rid, s in self._requests.items() if rid in keep}

    def clear(self) -> None:
        self._requests.clear()
