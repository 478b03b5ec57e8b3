"""The tensor-parallel group as the layers see it: this rank's place and the collectives.

`engine/distributed.py` creates the torch.distributed process group and wraps it here; layers
get it through their `LayerPlacement` (never from a global). With one rank every collective is
the identity, so single-process serving runs the same code without torch.distributed.

Every collective is called by every rank in the same order (the router sends each step to all
ranks, and each rank's step is a deterministic function of the step and its own state), and
each has the group's timeout: a rank that died or fell out of step turns into a
`CollectiveError` on the others instead of a hang.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ferrite_server.engine.errors import CollectiveError

T = TypeVar("T")


@dataclass(frozen=True)
class TensorParallelGroup:
    rank: int = 0
    world_size: int = 1
    # torch.distributed group of the compute collectives (NCCL on GPU, gloo on CPU).
    process_group: Any = None
    # A gloo group for small CPU-side exchanges (objects, block counts), also on GPU.
    cpu_group: Any = None
    # A gloo group used only by the liveness heartbeat (engine/group_watchdog.py).
    heartbeat_group: Any = None

    @property
    def is_parallel(self) -> bool:
        return self.world_size > 1

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of `tensor` over all ranks (in place; returned for chaining)."""
        if not self.is_parallel:
            return tensor
        _run("all_reduce", lambda: dist.all_reduce(tensor, group=self.process_group))
        return tensor

    def all_gather_last_dim(self, tensor: torch.Tensor) -> torch.Tensor:
        """[..., n] on each rank -> [..., world_size * n], rank 0's columns first."""
        if not self.is_parallel:
            return tensor
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        _run("all_gather", lambda: dist.all_gather(parts, tensor, group=self.process_group))
        return torch.cat(parts, dim=-1)

    def min_over_ranks(self, value: int) -> int:
        """The smallest of every rank's `value` (e.g. KV blocks each rank's memory holds)."""
        if not self.is_parallel:
            return value
        holder = torch.tensor([value], dtype=torch.int64)
        op = dist.ReduceOp.MIN
        _run("all_reduce(min)", lambda: dist.all_reduce(holder, op=op, group=self.cpu_group))
        return int(holder.item())

    def all_gather_object(self, value: T) -> list[T]:
        """Every rank's `value` (picklable), indexed by rank."""
        if not self.is_parallel:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        _run(
            "all_gather_object",
            lambda: dist.all_gather_object(gathered, value, group=self.cpu_group),
        )
        return gathered

    def rank0_value(self, value: T) -> T:
        """Rank 0's `value` on every rank (e.g. the seed of a shared random stream)."""
        return self.all_gather_object(value)[0]


def _run(what: str, collective: Callable[[], object]) -> None:
    try:
        collective()
    except RuntimeError as error:  # gloo / NCCL failures and timeouts are RuntimeErrors
        raise CollectiveError(f"tensor-parallel {what} failed: {error}") from error
