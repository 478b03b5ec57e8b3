"""What every peer reports about itself, and the shape of an in-process peer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ferrite_benchmark.latency import LatencyTarget
from ferrite_benchmark.records import BenchRequest
from ferrite_benchmark.runner import RunResult


@dataclass(frozen=True)
class PeerInfo:
    name: str  # as shown in the results table
    precision: str  # weights / compute precision, e.g. "bfloat16" or "Q4_1 (GGUF)"
    version: str  # the peer's package version
    how: str  # one line: how it was run (threads, batch size, server flags)


class InProcessPeer(Protocol):
    info: PeerInfo
    static_batch_size: int

    def latency_target(self) -> LatencyTarget:
        """Batch-1 greedy generation of one request, timed per token."""
        ...

    def run_static_batches(self, requests: list[BenchRequest]) -> RunResult:
        """All requests arrive at once and are served in fixed batches, in arrival order."""
        ...


def package_version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"
