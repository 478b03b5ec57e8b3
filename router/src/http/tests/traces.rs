//! The request span and id on the HTTP side: the caller's `traceparent` is the parent,
//! validation is a child, a stream's span lasts until its body is consumed; and the
//! metrics-only listener's routes.

use serde_json::json;

use super::*;
use crate::http::metrics_listener::metrics_app;
use crate::telemetry::test_exporter::record_spans_on_this_thread;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

fn with_headers(mut request: Request<Body>, headers: &[(&'static str, &str)]) -> Request<Body> {
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, value.parse().expect("header value"));
    }
    request
}

#[tokio::test]
async fn the_request_id_is_echoed_or_generated() {
    let app = TestApp::replying();
    let body = json!({"inputs": "Hello"}).to_string();
    let given = with_headers(post("/generate", &body), &[("x-request-id", "req-7")]);
    let (status, headers, _) = app.send(given).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-request-id"], "req-7");
    let (_, headers, _) = app.post("/generate", json!({"inputs": "Hello"})).await;
    assert_eq!(headers["x-request-id"].len(), 16);
}

#[tokio::test]
async fn a_stream_span_is_the_callers_child_and_ends_with_its_body() {
    let (_default, exporter) = record_spans_on_this_thread();
    let app = TestApp::replying();
    let body = json!({"inputs": "Hello", "parameters": {"max_new_tokens": 20}}).to_string();
    // The request / validation callsites are shared with the HTTP tests running on other
    // threads without this subscriber; one of them registering a callsite at the same moment
    // can leave it cached as disabled. Make sure they are registered (a first request), then
    // recompute their interest with this subscriber known, before the request under test.
    app.send(post("/generate_stream", &body)).await;
    tracing::callsite::rebuild_interest_cache();
    let num_warmup_spans = exporter.finished_spans().len();
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01");
    let request = with_headers(
        post("/generate_stream", &body),
        &[("traceparent", &traceparent)],
    );
    let response = app
        .router
        .clone()
        .oneshot(request)
        .await
        .expect("infallible");
    let is_request_span_done = || {
        exporter.finished_spans()[num_warmup_spans..]
            .iter()
            .any(|span| span.name == "POST /generate_stream")
    };
    assert!(!is_request_span_done(), "still streaming");
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    assert!(!sse_events(&bytes).is_empty());
    assert!(
        is_request_span_done(),
        "{:?}",
        exporter
            .finished_spans()
            .iter()
            .map(|span| span.name.to_string())
            .collect::<Vec<_>>()
    );

    let spans = exporter.finished_spans().split_off(num_warmup_spans);
    let request_span = spans
        .iter()
        .find(|span| span.name == "POST /generate_stream")
        .expect("request span");
    assert_eq!(request_span.span_context.trace_id().to_string(), TRACE_ID);
    assert_eq!(request_span.parent_span_id.to_string(), CALLER_SPAN_ID);
    let validation = spans
        .iter()
        .find(|span| span.name == "validation")
        .expect("validation span");
    assert_eq!(
        validation.parent_span_id,
        request_span.span_context.span_id()
    );
}

#[tokio::test]
async fn the_metrics_listener_serves_metrics_and_nothing_else() {
    let config = test_config();
    let tokenizer = Arc::new(byte_level_tokenizer());
    let submitter = FakeSubmitter::replying(Arc::clone(&tokenizer), REPLY);
    let router = metrics_app(test_state(&config, tokenizer, submitter));
    let (status, _, bytes) = send(&router, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&bytes).contains("# TYPE tgi_request_count counter"));
    let body = json!({"inputs": "Hello"}).to_string();
    let (status, _, _) = send(&router, post("/generate", &body)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
