//! W3C trace context in and out: `traceparent` / `tracestate` read from HTTP request headers,
//! and written into the gRPC metadata of shard calls.

use axum::http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let key = MetadataKey::from_bytes(key.as_bytes());
        let value = MetadataValue::try_from(value.as_str());
        if let (Ok(key), Ok(value)) = (key, value) {
            self.0.insert(key, value);
        }
    }
}

/// The caller's trace context when the request carries a valid `traceparent`.
pub fn remote_parent(headers: &HeaderMap) -> Option<Context> {
    let context = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    context.span().span_context().is_valid().then_some(context)
}

/// `message` as a gRPC request carrying the current span's trace context, when there is one
/// (nothing is added when tracing is off or the call is outside any traced span).
pub fn traced_request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let context = tracing::Span::current().context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new()
            .inject_context(&context, &mut MetadataInjector(request.metadata_mut()));
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::test_exporter::with_recorded_spans;
    use axum::http::HeaderValue;

    /// The trace context carried by gRPC metadata, as the shard reads it.
    fn metadata_parent(metadata: &MetadataMap) -> Option<Context> {
        remote_parent(&metadata.clone().into_headers())
    }

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN_ID: &str = "00f067aa0ba902b7";

    #[test]
    fn a_valid_traceparent_is_the_remote_parent() {
        let mut headers = HeaderMap::new();
        let traceparent = format!("00-{TRACE_ID}-{SPAN_ID}-01");
        headers.insert(
            "traceparent",
            HeaderValue::from_str(&traceparent).expect("ascii"),
        );
        let context = remote_parent(&headers).expect("a parent");
        let span = context.span();
        let span_context = span.span_context();
        assert_eq!(span_context.trace_id().to_string(), TRACE_ID);
        assert_eq!(span_context.span_id().to_string(), SPAN_ID);
        assert!(span_context.is_sampled());
        assert!(span_context.is_remote());
    }

    #[test]
    fn a_missing_or_malformed_traceparent_gives_none() {
        assert!(remote_parent(&HeaderMap::new()).is_none());
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static("00-zz-yy-01"));
        assert!(remote_parent(&headers).is_none());
    }

    #[test]
    fn a_traced_span_travels_in_the_metadata_as_the_parent() {
        let _recorded = with_recorded_spans(|| {
            let span = tracing::info_span!("shard_step");
            let expected = span.context().span().span_context().clone();
            let request = span.in_scope(|| traced_request(()));
            let sent = metadata_parent(request.metadata()).expect("traceparent sent");
            let sent = sent.span();
            assert!(expected.is_valid());
            assert_eq!(sent.span_context().trace_id(), expected.trace_id());
            assert_eq!(sent.span_context().span_id(), expected.span_id());
        });
    }

    #[test]
    fn outside_a_traced_span_nothing_is_injected() {
        let request = traced_request(());
        assert!(request.metadata().get("traceparent").is_none());
        assert!(metadata_parent(request.metadata()).is_none());
    }
}
