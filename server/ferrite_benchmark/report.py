"""Benchmark results as JSON files and as a short text summary on stdout."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ferrite_benchmark.metrics import Distribution, ServingMetrics
from ferrite_benchmark.records import RequestRecord

MAX_ERRORS_KEPT = 5


def rate_label(request_rate: float) -> str | float:
    """JSON has no infinity: an infinite rate is written as the string "inf"."""
    return "inf" if math.isinf(request_rate) else request_rate


def run_entry(request_rate: float, metrics: ServingMetrics,
              records: Sequence[RequestRecord]) -> dict[str, Any]:
    errors = [r.error for r in records if not r.success][:MAX_ERRORS_KEPT]
    return {"request_rate": rate_label(request_rate), "metrics": metrics.to_json(), "errors": errors}


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def _distribution_line(name: str, dist: Distribution | None) -> str:
    if dist is None:
        return f"{name:<22} n/a"
    return (f"{name:<22} mean {dist.mean_ms:9.1f}  p50 {dist.p50_ms:9.1f}  "
            f"p90 {dist.p90_ms:9.1f}  p99 {dist.p99_ms:9.1f}")


def summary_text(title: str, metrics: ServingMetrics) -> str:
    lines = [
        f"== {title} ==",
        f"{'completed / failed':<22} {metrics.completed} / {metrics.failed}",
        f"{'duration':<22} {metrics.duration_s:.2f} s",
        f"{'input / output tokens':<22} {metrics.total_input_tokens} / {metrics.total_output_tokens}",
        f"{'requests/s':<22} {metrics.request_throughput:.3f}",
        f"{'output tokens/s':<22} {metrics.output_throughput:.2f}",
        f"{'total tokens/s':<22} {metrics.total_token_throughput:.2f}",
        f"{'finish reasons':<22} {metrics.finish_reasons}",
    ]
    if metrics.goodput is not None:
        lines.append(f"{'goodput (requests/s)':<22} {metrics.goodput:.3f}")
    lines += [
        _distribution_line("TTFT (ms)", metrics.ttft),
        _distribution_line("TPOT (ms)", metrics.tpot),
        _distribution_line("ITL (ms)", metrics.itl),
        _distribution_line("E2E latency (ms)", metrics.e2e_latency),
    ]
    return "\n".join(lines)
