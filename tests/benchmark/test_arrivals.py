"""The arrival schedule: Poisson at the asked mean rate, seeded, or all at once."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ferrite_benchmark.arrivals import arrival_offsets_s, parse_request_rate


def test_poisson_schedule_has_the_asked_mean_rate() -> None:
    num_requests, rate = 20_000, 4.0
    offsets = arrival_offsets_s(num_requests, rate, seed=0)
    gaps = np.diff(offsets)
    assert offsets[0] == 0.0
    assert np.all(gaps >= 0)
    # Mean gap 1/rate; the standard error of the mean of 20k exponential gaps is 0.7%.
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.03)
    # Exponential gaps: standard deviation equals the mean.
    assert gaps.std() == pytest.approx(1 / rate, rel=0.05)
    assert (num_requests - 1) / offsets[-1] == pytest.approx(rate, rel=0.03)


def test_schedule_is_reproducible_per_seed() -> None:
    assert arrival_offsets_s(50, 2.0, seed=7) == arrival_offsets_s(50, 2.0, seed=7)
    assert arrival_offsets_s(50, 2.0, seed=7) != arrival_offsets_s(50, 2.0, seed=8)


def test_infinite_rate_sends_everything_at_once() -> None:
    assert arrival_offsets_s(5, math.inf, seed=0) == [0.0] * 5


def test_rate_parsing() -> None:
    assert math.isinf(parse_request_rate("inf"))
    assert parse_request_rate("2.5") == 2.5
    for bad in ("0", "-1", "fast"):
        with pytest.raises(ValueError):
            parse_request_rate(bad)
