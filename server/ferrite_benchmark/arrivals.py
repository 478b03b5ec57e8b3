"""When each request is sent: a seeded Poisson process, or everything at once.

Poisson arrivals at rate R mean independent exponential gaps with mean 1/R seconds, the usual
model of many independent users. The schedule is a list of offsets from the start, drawn up
front from its own seeded generator, so a run is reproducible and the same schedule drives
every target in a comparison.
"""

from __future__ import annotations

import math

import numpy as np

INFINITE_RATE = math.inf


def parse_request_rate(text: str) -> float:
    """`inf` (all at once) or a positive number of requests per second."""
    if text.strip().lower() in ("inf", "infinity"):
        return INFINITE_RATE
    rate = float(text)
    if not rate > 0:
        raise ValueError(f"request rate must be positive or inf, got {text!r}")
    return rate


def arrival_offsets_s(num_requests: int, request_rate: float, seed: int) -> list[float]:
    """Send offsets in seconds from the start, non-decreasing; all zero at infinite rate."""
    if num_requests < 0:
        raise ValueError(f"num_requests must be >= 0, got {num_requests}")
    if math.isinf(request_rate):
        return [0.0] * num_requests
    rng = np.random.default_rng(seed)
    gaps_s = rng.exponential(scale=1.0 / request_rate, size=num_requests)
    # The first request goes at once: the run's clock starts with it.
    gaps_s[:1] = 0.0
    return np.cumsum(gaps_s).tolist()
