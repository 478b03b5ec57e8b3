//! Server-sent events framed as TGI frames them: `data:{json}\n\n` per event. Hand-framed
//! rather than axum's `Sse` so the bytes match TGI (axum writes `data: `), and so the OpenAI
//! routes can send `data: [DONE]` through the same path.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::Serialize;

/// One `data:` event holding `value` as JSON.
pub fn json_event<T: Serialize>(value: &T) -> Bytes {
    // Serializing these DTOs cannot fail (string keys, no custom serializers).
    let json = serde_json::to_string(value).unwrap_or_else(|error| {
        format!(r#"{{"error":"cannot serialize event: {error}","error_type":"internal"}}"#)
    });
    Bytes::from(format!("data:{json}\n\n"))
}

/// An SSE comment: clients ignore it; proxies see a live connection.
pub fn keep_alive() -> Bytes {
    Bytes::from_static(b": keep-alive\n\n")
}

/// A streaming response; `headers` are added to the SSE ones.
pub fn response(
    events: impl Stream<Item = Bytes> + Send + 'static,
    headers: HeaderMap,
) -> Response {
    let body = Body::from_stream(events.map(Ok::<_, Infallible>));
    let mut response = (headers, body).into_response();
    let response_headers = response.headers_mut();
    response_headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response_headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style proxies not to buffer the stream.
    response_headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
