"""Per-request state the shard keeps between steps, and the set of live requests.

The router owns scheduling and KV blocks; the shard only remembers what it needs to compute
the next step of each request: its tokens (for penalties and the next decode input), how many
of them are in the KV cache, its parameters and resolved seed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from ferrite_server.engine.types import RequestParams


@dataclass
class RequestState:
    request_id: int
    params: RequestParams
    seed: int  # params.sampling.seed, or one the engine drew at creation
    # Prompt tokens seen in chunks so far. A prefix-cache hit's tokens never reach the shard,
    # so they are not here.
    prompt_ids: list[int] = field(default_factory=list)
    # Tokens generated for this request: those resumed after a preemption (the prompt's last
    # `resumed_generated_tokens`), then each sampled token. The last one is the next decode's
    # input.
    generated_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    prompt_complete: bool = False
    # [hidden] float: the previous chunk's last hidden state, kept when prompt logprobs are
    # wanted, because it predicts the next chunk's first token.
    pending_hidden: torch.Tensor | None = None

    @property
    def num_generated_tokens(self) -> int:
        return len(self.generated_ids)


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
