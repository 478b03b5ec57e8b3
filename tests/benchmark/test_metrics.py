"""Serving metric arithmetic from synthetic timestamps (ferrite_benchmark.metrics)."""

from __future__ import annotations

import pytest

from ferrite_benchmark.metrics import Distribution, GoodputSlo, compute_metrics
from ferrite_benchmark.records import RequestRecord


def _record(send_s: float, chunk_times_s: list[float], end_s: float, output_tokens: int,
            prompt_len: int = 10) -> RequestRecord:
    return RequestRecord(prompt_len=prompt_len, send_time_s=send_s, chunk_times_s=chunk_times_s,
                         end_time_s=end_s, output_tokens=output_tokens, success=True)


def _records() -> list[RequestRecord]:
    first = _record(0.0, [1.0, 1.5, 2.5], 2.5, 3, prompt_len=10)  # TTFT 1.0, TPOT 0.75
    second = _record(1.0, [3.0, 3.2], 3.3, 2, prompt_len=20)  # TTFT 2.0, TPOT 0.3
    failed = RequestRecord(prompt_len=30, send_time_s=0.5, end_time_s=0.6, error="HTTP 500")
    return [first, second, failed]


def test_per_request_quantities() -> None:
    first, second, _ = _records()
    assert first.ttft_s == pytest.approx(1.0)
    assert first.tpot_s == pytest.approx(0.75)
    assert first.itls_s == pytest.approx([0.5, 1.0])
    assert first.e2e_latency_s == pytest.approx(2.5)
    assert second.tpot_s == pytest.approx(0.3)
    assert _record(0.0, [0.4], 0.4, 1).tpot_s is None


def test_aggregates_over_successful_requests() -> None:
    metrics = compute_metrics(_records(), duration_s=4.0)
    assert (metrics.completed, metrics.failed) == (2, 1)
    assert metrics.total_input_tokens == 30  # the failed request's prompt is not counted
    assert metrics.total_output_tokens == 5
    assert metrics.request_throughput == pytest.approx(0.5)
    assert metrics.output_throughput == pytest.approx(1.25)
    assert metrics.total_token_throughput == pytest.approx(35 / 4.0)
    assert metrics.goodput is None


def test_distributions_in_milliseconds_with_linear_percentiles() -> None:
    metrics = compute_metrics(_records(), duration_s=4.0)
    assert metrics.ttft == Distribution(2, 1500.0, 1500.0, pytest.approx(1900.0), pytest.approx(1990.0))
    # ITL pools every gap of every request: 500, 1000 and 200 ms.
    assert metrics.itl.count == 3
    assert metrics.itl.mean_ms == pytest.approx(1700 / 3)
    assert metrics.itl.p50_ms == pytest.approx(500.0)
    assert metrics.itl.p90_ms == pytest.approx(900.0)  # 500 + 0.8 * (1000 - 500)
    assert metrics.tpot.mean_ms == pytest.approx(525.0)
    assert metrics.e2e_latency.p50_ms == pytest.approx(2400.0)


def test_percentiles_of_one_to_hundred() -> None:
    dist = Distribution.of_seconds([v / 1e3 for v in range(1, 101)])
    assert (dist.p50_ms, dist.p90_ms, dist.p99_ms) == pytest.approx((50.5, 90.1, 99.01))
    assert Distribution.of_seconds([]) is None


def test_goodput_counts_requests_meeting_every_slo() -> None:
    records = _records()
    assert compute_metrics(records, 4.0, GoodputSlo(ttft_ms=1200)).goodput == pytest.approx(0.25)
    assert compute_metrics(records, 4.0, GoodputSlo(tpot_ms=500)).goodput == pytest.approx(0.25)
    assert compute_metrics(records, 4.0, GoodputSlo(ttft_ms=1200, tpot_ms=500)).goodput == 0.0
    assert compute_metrics(records, 4.0, GoodputSlo(e2e_ms=3000)).goodput == pytest.approx(0.5)


def test_goodput_slo_parsing() -> None:
    slo = GoodputSlo.parse(["ttft:500", "tpot:50", "e2el:10000"])
    assert slo == GoodputSlo(ttft_ms=500.0, tpot_ms=50.0, e2e_ms=10000.0)
    assert GoodputSlo.parse([]).is_empty()
    for bad in (["ttft"], ["itl:5"], ["ttft:-1"]):
        with pytest.raises(ValueError):
            GoodputSlo.parse(bad)


def test_duration_must_be_positive() -> None:
    with pytest.raises(ValueError):
        compute_metrics(_records(), duration_s=0.0)


def test_a_request_ended_by_its_first_token_is_completed_not_failed() -> None:
    """An immediate EOS streams no text: no output chunk, but the request finished normally."""
    eos_first = _record(0.0, [], 0.8, 0)
    assert eos_first.ttft_s == pytest.approx(0.8) and eos_first.itls_s == []
    metrics = compute_metrics([*_records(), eos_first], duration_s=4.0)
    assert (metrics.completed, metrics.failed) == (3, 1)
    assert metrics.total_output_tokens == 5
    assert metrics.ttft.p50_ms == pytest.approx(1000.0)
