"""Pearson chi-square tests for token frequencies (speculative sampling must keep the target's
distribution). The critical value comes from scipy when it is installed, else from the
Wilson-Hilferty approximation (within ~1% of the exact quantile for the degrees of freedom
these tests have).

Samples come from seeded requests, so a test's outcome is the same on every run: `alpha` only
decides how far from the expected counts a run may land.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from statistics import NormalDist

DEFAULT_ALPHA = 1e-3
# A bin expected to hold fewer samples than this is pooled with the other rare ones
# (Cochran's rule of thumb for the chi-square approximation).
MIN_EXPECTED_COUNT = 5.0


def chi_square_critical_value(degrees_of_freedom: int, alpha: float = DEFAULT_ALPHA) -> float:
    """The (1 - alpha) quantile of the chi-square distribution."""
    try:
        from scipy.stats import chi2  # type: ignore[import-not-found]

        return float(chi2.ppf(1.0 - alpha, degrees_of_freedom))
    except ImportError:
        k = float(degrees_of_freedom)
        z = NormalDist().inv_cdf(1.0 - alpha)
        return k * (1.0 - 2.0 / (9.0 * k) + z * math.sqrt(2.0 / (9.0 * k))) ** 3


def goodness_of_fit(samples: Sequence[Hashable], probs: Mapping[Hashable, float]) -> tuple[float, int]:
    """(statistic, degrees of freedom) of `samples` against the distribution `probs`."""
    counts = Counter(samples)
    total = len(samples)
    observed: list[float] = []
    expected: list[float] = []
    rare_observed = rare_expected = 0.0
    for value in set(probs) | set(counts):
        expected_count = total * probs.get(value, 0.0)
        if expected_count < MIN_EXPECTED_COUNT:
            rare_observed += counts.get(value, 0)
            rare_expected += expected_count
        else:
            observed.append(counts.get(value, 0))
            expected.append(expected_count)
    if rare_expected > 0.0 or rare_observed > 0:
        observed.append(rare_observed)
        expected.append(max(rare_expected, 1e-12))  # observed where p says never: huge
    statistic = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
    return statistic, len(observed) - 1


def homogeneity(first: Sequence[Hashable], second: Sequence[Hashable]) -> tuple[float, int]:
    """(statistic, degrees of freedom) of the hypothesis that both samples come from one
    distribution (a 2 x k contingency table; rare values pooled)."""
    a, b = Counter(first), Counter(second)
    total_a, total_b = len(first), len(second)
    share_a = total_a / (total_a + total_b)
    rows: list[tuple[float, float]] = []
    rare_a = rare_b = 0.0
    for value in set(a) | set(b):
        count_a, count_b = a.get(value, 0), b.get(value, 0)
        if (count_a + count_b) * min(share_a, 1.0 - share_a) < MIN_EXPECTED_COUNT:
            rare_a, rare_b = rare_a + count_a, rare_b + count_b
        else:
            rows.append((count_a, count_b))
    if rare_a + rare_b > 0:
        rows.append((rare_a, rare_b))
    statistic = 0.0
    for count_a, count_b in rows:
        both = count_a + count_b
        expected_a, expected_b = both * share_a, both * (1.0 - share_a)
        statistic += (count_a - expected_a) ** 2 / expected_a + (count_b - expected_b) ** 2 / expected_b
    return statistic, max(len(rows) - 1, 1)


def passes(statistic_and_df: tuple[float, int], alpha: float = DEFAULT_ALPHA) -> bool:
    statistic, degrees_of_freedom = statistic_and_df
    return statistic <= chi_square_critical_value(degrees_of_freedom, alpha)
