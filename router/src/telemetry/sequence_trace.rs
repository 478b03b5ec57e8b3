//! The spans of one scheduled sequence under its request's span: `queue` until it is first
//! scheduled, `prefill` until its prompt is computed, `decode` until it leaves the batch. A
//! preemption closes the current phase and opens a new `queue` (then `prefill`, `decode`).
//! Dropping the trace (the sequence leaves the scheduler) closes the open phase.

use opentelemetry::trace::{SpanContext, TraceContextExt};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Queue,
    Prefill,
    Decode,
}

#[derive(Debug)]
pub struct SequenceTrace {
    request: Span,
    phase: Phase,
    phase_span: Span,
    /// The exported identity of `phase_span`; None when tracing is off or not sampled.
    phase_context: Option<SpanContext>,
}

impl SequenceTrace {
    /// A new sequence, waiting. `request` is the API request's span (`Span::none()` for
    /// requests nobody traces, e.g. health probes and tests: then no span is made at all).
    pub fn queued(request: Span) -> Self {
        let mut trace = Self {
            request,
            phase: Phase::Queue,
            phase_span: Span::none(),
            phase_context: None,
        };
        trace.open(Phase::Queue, false);
        trace
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The span a shard step of this sequence is parented to.
    pub fn phase_span(&self) -> &Span {
        &self.phase_span
    }

    pub fn phase_context(&self) -> Option<&SpanContext> {
        self.phase_context.as_ref()
    }

    /// A chunk of this sequence is in a step: the wait is over (no-op once prefilling).
    pub fn scheduled(&mut self) {
        if self.phase == Phase::Queue {
            self.open(Phase::Prefill, false);
        }
    }

    /// The whole prompt is computed, or its first decode step is sent (with asynchronous
    /// scheduling that is before the prompt's last step answered): tokens come one step at
    /// a time from here.
    pub fn prefill_done(&mut self) {
        if self.phase != Phase::Decode {
            self.open(Phase::Decode, false);
        }
    }

    /// The sequence lost its KV blocks and waits to be recomputed.
    pub fn preempted(&mut self) {
        self.open(Phase::Queue, true);
    }

    fn open(&mut self, phase: Phase, after_preemption: bool) {
        self.phase = phase;
        if self.request.is_none() {
            return;
        }
        let parent = &self.request;
        // Replacing the old span drops (closes) it.
        self.phase_span = match phase {
            Phase::Queue => tracing::info_span!(parent: parent, "queue", after_preemption),
            Phase::Prefill => tracing::info_span!(parent: parent, "prefill"),
            Phase::Decode => tracing::info_span!(parent: parent, "decode"),
        };
        let context = self.phase_span.context();
        let span_context = context.span().span_context().clone();
        // An unsampled request (its caller's `traceparent` said so) is not exported: a step
        // span under it would be dropped too, so it cannot be a step's parent or link.
        let is_exported = span_context.is_valid() && span_context.is_sampled();
        self.phase_context = is_exported.then_some(span_context);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::propagation::remote_parent;
    use crate::telemetry::test_exporter::with_recorded_spans;
    use axum::http::{HeaderMap, HeaderValue};

    fn request_span(traceparent: &'static str) -> Span {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static(traceparent));
        let span = tracing::info_span!("request");
        let _ = span.set_parent(remote_parent(&headers).expect("valid traceparent"));
        span
    }

    #[test]
    fn only_sampled_requests_offer_their_phase_to_steps() {
        let exporter = with_recorded_spans(|| {
            let sampled = SequenceTrace::queued(request_span(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ));
            let unsampled = SequenceTrace::queued(request_span(
                "00-4bf92f3577b34da6a3ce929d0e0e4737-00f067aa0ba902b8-00",
            ));
            assert!(sampled.phase_context().is_some());
            assert!(unsampled.phase_context().is_none());
        });
        let names: Vec<_> = exporter
            .finished_spans()
            .iter()
            .map(|span| span.name.to_string())
            .collect();
        // Only the sampled request's spans were exported.
        assert_eq!(names, vec!["queue", "request"]);
    }

    #[test]
    fn phases_advance_and_untraced_requests_make_no_spans() {
        let mut trace = SequenceTrace::queued(Span::none());
        assert_eq!(trace.phase(), Phase::Queue);
        trace.scheduled();
        assert_eq!(trace.phase(), Phase::Prefill);
        trace.scheduled(); // a later chunk
        assert_eq!(trace.phase(), Phase::Prefill);
        trace.prefill_done();
        assert_eq!(trace.phase(), Phase::Decode);
        trace.preempted();
        assert_eq!(trace.phase(), Phase::Queue);
        assert!(trace.phase_span().is_none());
        assert!(trace.phase_context().is_none());
    }
}
