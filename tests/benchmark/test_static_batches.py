"""Static-batch bookkeeping shared by the in-process peers."""

from __future__ import annotations

from ferrite_benchmark.peers.static_batches import chunks, record_from_steps, row_output_len
from ferrite_benchmark.records import BenchRequest

EOS = frozenset({2})


def test_row_length_stops_at_eos_or_its_own_limit() -> None:
    assert row_output_len([5, 6, 2, 2, 2], EOS, max_new_tokens=10) == 3  # EOS included
    assert row_output_len([5, 6, 7, 8, 2], EOS, max_new_tokens=3) == 3
    assert row_output_len([5, 6], EOS, max_new_tokens=10) == 2


def test_batches_keep_arrival_order() -> None:
    requests = [BenchRequest(str(i), 1, 1) for i in range(5)]
    assert [[r.prompt for r in batch] for batch in chunks(requests, 2)] == [["0", "1"], ["2", "3"], ["4"]]


def test_record_takes_the_steps_its_row_produced() -> None:
    record = record_from_steps(BenchRequest("p", 7, 4), 10.0, [10.5, 10.7, 11.0, 11.2], 3, "abc")
    assert record.success and record.output_tokens == 3
    assert record.ttft_s == 0.5 and record.e2e_latency_s == 1.0
    failed = record_from_steps(BenchRequest("p", 7, 4), 10.0, [10.5], 3, "abc")
    assert not failed.success and "3 tokens" in failed.error
