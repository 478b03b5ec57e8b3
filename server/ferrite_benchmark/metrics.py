"""Serving metrics from request records: the arithmetic, kept free of I/O so tests can feed it
synthetic timestamps.

Definitions (the ones vLLM's and TGI's benchmarks use, so numbers compare across tools):
- TTFT: request sent -> first output chunk received.
- TPOT: (end-to-end latency - TTFT) / (output tokens - 1), per request with >= 2 tokens.
- ITL: every gap between consecutive output chunks, pooled over all requests.
- E2E latency: request sent -> response complete.
- Throughputs divide by the benchmark's wall time (first send -> last completion): requests/s,
  output tokens/s, and (prompt + output) tokens/s.
- Goodput: successful requests/s that met every given SLO (TTFT, TPOT, E2E latency bounds).
Percentiles interpolate linearly between order statistics (numpy's default).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from ferrite_benchmark.records import RequestRecord

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Distribution:
    """Summary of a set of durations, in milliseconds."""

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @classmethod
    def of_seconds(cls, values_s: Sequence[float]) -> "Distribution | None":
        if not values_s:
            return None
        values_ms = np.asarray(values_s, dtype=np.float64) * 1e3
        p50, p90, p99 = (float(np.percentile(values_ms, q)) for q in PERCENTILES)
        return cls(len(values_ms), float(values_ms.mean()), p50, p90, p99)


@dataclass(frozen=True)
class GoodputSlo:
    """Service-level objectives in milliseconds; None means no bound on that quantity."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    @classmethod
    def parse(cls, terms: Sequence[str]) -> "GoodputSlo":
        """From `["ttft:500", "tpot:50", "e2el:10000"]` (vLLM's --goodput spelling)."""
        keys = {"ttft": "ttft_ms", "tpot": "tpot_ms", "e2el": "e2e_ms", "e2e": "e2e_ms"}
        bounds: dict[str, float] = {}
        for term in terms:
            name, sep, value = term.partition(":")
            if not sep or name not in keys:
                raise ValueError(f"goodput SLO {term!r}: expected ttft:MS, tpot:MS or e2el:MS")
            if float(value) <= 0:
                raise ValueError(f"goodput SLO {term!r}: the bound must be positive")
            bounds[keys[name]] = float(value)
        return cls(**bounds)

    def is_empty(self) -> bool:
        return self.ttft_ms is None and self.tpot_ms is None and self.e2e_ms is None

    def met_by(self, record: RequestRecord) -> bool:
        checks = (
            (self.ttft_ms, record.ttft_s),
            (self.tpot_ms, record.tpot_s or 0.0),
            (self.e2e_ms, record.e2e_latency_s),
        )
        return all(bound is None or value * 1e3 <= bound for bound, value in checks)


@dataclass(frozen=True)
class ServingMetrics:
    completed: int
    failed: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float  # requests/s
    output_throughput: float  # output tokens/s
    total_token_throughput: float  # (prompt + output) tokens/s
    goodput: float | None  # requests/s meeting the SLOs; None when no SLO was given
    ttft: Distribution | None
    tpot: Distribution | None
    itl: Distribution | None
    e2e_latency: Distribution | None
    # How the successful answers ended, e.g. {"length": 50, "stop": 14}: shows when targets
    # did different amounts of work (EOS reached sooner, or answers cut short).
    finish_reasons: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def compute_metrics(
    records: Sequence[RequestRecord], duration_s: float, slo: GoodputSlo | None = None
) -> ServingMetrics:
    """Metrics over the successful records; failures are only counted."""
    if duration_s <= 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    done = [r for r in records if r.success]
    input_tokens = sum(r.prompt_len for r in done)
    output_tokens = sum(r.output_tokens for r in done)
    goodput = None
    if slo is not None and not slo.is_empty():
        goodput = sum(1 for r in done if slo.met_by(r)) / duration_s
    tpots = [t for t in (r.tpot_s for r in done) if t is not None]
    return ServingMetrics(
        completed=len(done),
        failed=len(records) - len(done),
        duration_s=duration_s,
        total_input_tokens=input_tokens,
        total_output_tokens=output_tokens,
        request_throughput=len(done) / duration_s,
        output_throughput=output_tokens / duration_s,
        total_token_throughput=(input_tokens + output_tokens) / duration_s,
        goodput=goodput,
        ttft=Distribution.of_seconds([r.ttft_s for r in done]),
        tpot=Distribution.of_seconds(tpots),
        itl=Distribution.of_seconds([gap for r in done for gap in r.itls_s]),
        e2e_latency=Distribution.of_seconds([r.e2e_latency_s for r in done]),
        finish_reasons=dict(Counter(r.finish_reason or "unknown" for r in done)),
    )
