"""What tracing adds to each shard step, in the shard process (issue 8 "Measure").

    python bench/shard_span_cost.py

Times the servicer's tracing work for one Prefill / Decode, with nothing else around it:
reading the `traceparent` from the metadata, the step span, and its `forward` / `sampling`
children, handed to the SDK's batch span processor (exporting to a sink). Tracing off is the
no-op tracer the shard uses without --otlp-endpoint. Median over rounds, µs per step.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from ferrite_server.config import TracingConfig
from ferrite_server.engine.types import StepTimings
from ferrite_server.tracing import NoTracing, OtlpTracing, StepTracer

METADATA = (("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),)
SIZES = {"num_chunks": 0, "num_decodes": 64}
STEPS_PER_ROUND = 2000
ROUNDS = 5


class Sink(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def us_per_step(tracer: StepTracer, timings: StepTimings) -> float:
    start = time.perf_counter_ns()
    for _ in range(STEPS_PER_ROUND):
        with tracer.step_span("decode", METADATA, SIZES) as span:
            span.record_timings(timings)
    return (time.perf_counter_ns() - start) / STEPS_PER_ROUND / 1e3


def main() -> None:
    with_forward = StepTimings(forward_ns=1000, sampling_ns=100, total_ns=2000,
                               forward_start_ns=time.perf_counter_ns())
    step_only = StepTimings(forward_ns=1000, sampling_ns=100, total_ns=2000)  # no children
    traced = OtlpTracing(TracingConfig(), rank=0, exporter=Sink())
    cases = {
        "off": (NoTracing(), with_forward),
        "on: step span only": (traced, step_only),
        "on: step span + forward + sampling (what the shard does)": (traced, with_forward),
    }
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(ROUNDS):
        for name, (tracer, timings) in cases.items():
            results[name].append(us_per_step(tracer, timings))
    traced.shutdown()
    print("| shard tracing | µs / step (median) |")
    print("| --- | --- |")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):.1f} |")


if __name__ == "__main__":
    main()
