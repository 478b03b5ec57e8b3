"""Best-of-N wall time of a callable, for the in-process CPU micro-benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_ms(fn: Callable[[], object], repeats: int = 3) -> float:
    """The fastest of `repeats` calls after one warm-up call, in milliseconds."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3
