//! The span of one API request: opened by a middleware on the generation routes, parented to
//! the client's `traceparent` when it sent one, entered while the handler runs AND while the
//! response body is polled, so a stream's span lasts until its last event and log lines written
//! on the way (the finished-request line included) carry the request's id.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::propagation::remote_parent;

pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// A client-chosen request id longer than this is replaced by a generated one.
const MAX_REQUEST_ID_BYTES: usize = 128;

/// Axum middleware (`middleware::from_fn`).
pub async fn trace_request(request: Request, next: Next) -> Response {
    let request_id = request_id(request.headers());
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{method} {path}"),
        otel.kind = "server",
        http.request.method = %method,
        url.path = %path,
        request_id = %request_id,
    );
    if let Some(parent) = remote_parent(request.headers()) {
        // Before the span is first entered: its parent is fixed once it starts.
        let _ = span.set_parent(parent);
    }
    let response = next.run(request).instrument(span.clone()).await;
    let (mut parts, body) = response.into_parts();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        parts.headers.insert(REQUEST_ID_HEADER, value);
    }
    Response::from_parts(parts, Body::new(SpannedBody { inner: body, span }))
}

/// The client's `x-request-id` when it is usable, else a fresh random one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID_BYTES)
        .map_or_else(|| format!("{:016x}", rand::random::<u64>()), str::to_string)
}

/// A response body that holds the request span open and enters it on every poll.
struct SpannedBody {
    inner: Body,
    span: Span,
}

impl HttpBody for SpannedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let _entered = this.span.enter();
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_request_id_is_kept_and_a_missing_one_generated() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        let generated = request_id(&HeaderMap::new());
        assert_eq!(generated.len(), 16);
        assert!(generated.chars().all(|c| c.is_ascii_hexdigit()));
        let too_long = "x".repeat(MAX_REQUEST_ID_BYTES + 1);
        headers.insert(
            REQUEST_ID_HEADER,
            HeaderValue::from_str(&too_long).expect("ascii"),
        );
        assert_ne!(request_id(&headers), too_long);
    }
}
