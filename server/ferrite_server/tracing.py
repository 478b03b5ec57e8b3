"""OpenTelemetry tracing of the shard's steps.

The router sends each Prefill / Decode call with the W3C trace context of its `shard_step` span
in the gRPC metadata (`traceparent`). With `--otlp-endpoint` set, the shard opens a `prefill` or
`decode` span under that parent, with `forward` and `sampling` children placed from the engine's
own timings, and exports them over OTLP/gRPC through a batch span processor. Without an
endpoint nothing is imported, built or exported: `NoTracing` hands out a do-nothing span.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol

from ferrite_server.config import TracingConfig
from ferrite_server.engine.types import StepTimings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

logger = logging.getLogger(__name__)

INSTRUMENTATION_NAME = "ferrite_server"
# How long shutdown waits for the last spans to reach the collector.
FLUSH_TIMEOUT_MS = 5_000


class StepSpan(Protocol):
    def record_timings(self, timings: StepTimings) -> None: ...


class StepTracer(Protocol):
    def step_span(
        self, name: str, metadata: Iterable[tuple[str, str | bytes]], attributes: Mapping[str, int]
    ) -> contextlib.AbstractContextManager[StepSpan]: ...

    def shutdown(self) -> None: ...


class _NoSpan:
    def record_timings(self, timings: StepTimings) -> None:
        pass


class NoTracing:
    """Tracing off: every call is a no-op."""

    def step_span(
        self, name: str, metadata: Iterable[tuple[str, str | bytes]], attributes: Mapping[str, int]
    ) -> contextlib.AbstractContextManager[StepSpan]:
        return contextlib.nullcontext(_NoSpan())

    def shutdown(self) -> None:
        pass


class _OtelStepSpan:
    def __init__(self, tracer: Tracer, span: Span) -> None:
        self._tracer = tracer
        self._span = span

    def record_timings(self, timings: StepTimings) -> None:
        """forward and sampling as children, at the times the engine measured them."""
        from opentelemetry import trace

        self._span.set_attribute("forward_ns", timings.forward_ns)
        self._span.set_attribute("sampling_ns", timings.sampling_ns)
        if timings.forward_start_ns == 0:
            return  # no forward ran (every request in the step was rejected)
        # perf_counter (what the engine measures with) -> the epoch ns OpenTelemetry wants.
        epoch_offset_ns = time.time_ns() - time.perf_counter_ns()
        forward_start_ns = timings.forward_start_ns + epoch_offset_ns
        sampling_start_ns = forward_start_ns + timings.forward_ns
        parent = trace.set_span_in_context(self._span)
        for name, start_ns, duration_ns in (
            ("forward", forward_start_ns, timings.forward_ns),
            ("sampling", sampling_start_ns, timings.sampling_ns),
        ):
            child = self._tracer.start_span(name, context=parent, start_time=start_ns)
            child.end(end_time=start_ns + duration_ns)


class OtlpTracing:
    """Spans exported to an OTLP/gRPC collector by a batch span processor."""

    def __init__(self, config: TracingConfig, rank: int, exporter: SpanExporter | None = None) -> None:
        """`exporter`: where spans go (tests pass an in-memory one); default OTLP/gRPC to
        `config.otlp_endpoint`."""
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        if exporter is None:
            if config.otlp_endpoint is None:
                raise ValueError("OtlpTracing needs an endpoint or an exporter")
            exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint, insecure=_is_plaintext(config.otlp_endpoint))
        # The provider is ours, not OpenTelemetry's global one: no process-wide state.
        resource = Resource({"service.name": config.otlp_service_name, "ferrite.shard.rank": rank})
        self._provider: TracerProvider = TracerProvider(resource=resource)
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer(INSTRUMENTATION_NAME)
        self._propagator = TraceContextTextMapPropagator()

    @contextlib.contextmanager
    def step_span(
        self, name: str, metadata: Iterable[tuple[str, str | bytes]], attributes: Mapping[str, int]
    ) -> Iterator[StepSpan]:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        carrier = {key: value for key, value in metadata if isinstance(value, str)}
        parent = self._propagator.extract(carrier=carrier)
        span = self._tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=dict(attributes))
        try:
            yield _OtelStepSpan(self._tracer, span)
        except BaseException as error:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error)))
            raise
        finally:
            span.end()

    def shutdown(self) -> None:
        """Exports what is still queued, then stops the processor."""
        if not self._provider.force_flush(FLUSH_TIMEOUT_MS):
            logger.warning("not every span reached %s before shutdown", "the OTLP collector")
        self._provider.shutdown()


def _is_plaintext(endpoint: str) -> bool:
    # http:// (or no scheme) is a plaintext channel, as collectors on localhost usually are.
    return not endpoint.startswith("https://")


def build_tracer(config: TracingConfig, rank: int) -> StepTracer:
    if config.otlp_endpoint is None:
        return NoTracing()
    logger.info("exporting traces to %s as %s", config.otlp_endpoint, config.otlp_service_name)
    return OtlpTracing(config, rank)
