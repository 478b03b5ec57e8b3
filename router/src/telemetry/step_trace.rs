//! The `shard_step` span around one Prefill / Decode call.
//!
//! A step batches many requests, but gRPC metadata carries one trace context. The step span is
//! therefore a child of ONE request in the batch: the oldest traced one (the first admitted),
//! under its current phase span (`prefill` or `decode`), and it carries a span link to the phase
//! span of every other traced request in the step. So each traced request sees the steps that
//! served it: as children for the oldest, as links for the rest; and the shard's spans, whose
//! parent comes from the metadata, sit under the step span in the oldest request's trace.

use opentelemetry::trace::SpanContext;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::sequence_trace::SequenceTrace;

/// Most links on one step span (the OpenTelemetry SDK's default span link limit).
pub const MAX_LINKS: usize = 128;

#[derive(Debug, Default)]
pub struct StepTrace {
    parent: Option<Span>,
    links: Vec<SpanContext>,
}

impl StepTrace {
    /// From the step's sequences in admission order, oldest first.
    pub fn collect<'a>(traces: impl IntoIterator<Item = &'a SequenceTrace>) -> Self {
        let mut step = Self::default();
        for trace in traces {
            let Some(context) = trace.phase_context() else {
                continue;
            };
            if step.parent.is_none() {
                step.parent = Some(trace.phase_span().clone());
            } else if step.links.len() < MAX_LINKS {
                step.links.push(context.clone());
            }
        }
        step
    }

    pub fn is_traced(&self) -> bool {
        self.parent.is_some()
    }

    pub fn num_links(&self) -> usize {
        self.links.len()
    }

    /// The step's span; None when no request in the step is traced (nothing to attach to).
    pub fn span(self, method: &'static str, batch_size: usize, num_tokens: usize) -> Option<Span> {
        let parent = self.parent?;
        let span = tracing::info_span!(
            parent: &parent,
            "shard_step",
            otel.kind = "client",
            method,
            // Signed: OpenTelemetry has no unsigned integers (u64 would arrive as a string).
            batch_size = batch_size as i64,
            num_tokens = num_tokens as i64,
            num_linked_requests = self.links.len() as i64,
            forward_ns = tracing::field::Empty,
            sampling_ns = tracing::field::Empty,
        );
        for link in self.links {
            span.add_link(link);
        }
        Some(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::test_exporter::with_recorded_spans;

    #[test]
    fn untraced_sequences_make_no_step_span() {
        let traces = [
            SequenceTrace::queued(Span::none()),
            SequenceTrace::queued(Span::none()),
        ];
        let step = StepTrace::collect(&traces);
        assert!(!step.is_traced());
        assert!(step.span("decode", 2, 2).is_none());
    }

    #[test]
    fn the_oldest_traced_request_is_the_parent_and_the_others_are_links() {
        let mut oldest = None;
        let mut others = Vec::new();
        let exporter = with_recorded_spans(|| {
            let requests: Vec<Span> = (0..3).map(|_| tracing::info_span!("request")).collect();
            let mut traces: Vec<SequenceTrace> = requests
                .iter()
                .map(|request| SequenceTrace::queued(request.clone()))
                .collect();
            // An untraced sequence first: it is skipped, not chosen as the parent.
            traces.insert(0, SequenceTrace::queued(Span::none()));
            for trace in &mut traces {
                trace.scheduled();
            }
            oldest = traces[1].phase_context().cloned();
            others = traces[2..]
                .iter()
                .filter_map(|trace| trace.phase_context().cloned())
                .collect();
            let step = StepTrace::collect(&traces);
            assert_eq!(step.num_links(), 2);
            let span = step.span("prefill", 4, 40).expect("traced step");
            drop(span);
        });
        let oldest = oldest.expect("traced");
        let spans = exporter.finished_spans();
        let step_span = spans
            .iter()
            .find(|span| span.name == "shard_step")
            .expect("step exported");
        assert_eq!(step_span.span_context.trace_id(), oldest.trace_id());
        assert_eq!(step_span.parent_span_id, oldest.span_id());
        let linked: Vec<_> = step_span
            .links
            .iter()
            .map(|link| link.span_context.span_id())
            .collect();
        let expected: Vec<_> = others.iter().map(SpanContext::span_id).collect();
        assert_eq!(linked, expected);
    }
}
