//! HTTP tests: the real `app()` driven with `oneshot`, the scheduler replaced by a fake.

mod deadlines;
mod errors;
mod generate;
mod ops;
mod stream;
mod traces;
mod with_scheduler;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use serde_json::Value;
use tower::ServiceExt;

use super::app;
use crate::config::RouterConfig;
use crate::testing::fake_submitter::FakeSubmitter;
use crate::testing::tiny_tokenizer::byte_level_tokenizer;
use crate::testing::{test_config, test_state};
use crate::tokenizer::TextTokenizer;

/// What the fake "model" answers to every prompt.
const REPLY: &str = " world 😀 and more";

struct TestApp {
    router: Router,
    submitter: Arc<FakeSubmitter>,
    tokenizer: Arc<TextTokenizer>,
}

impl TestApp {
    fn new(make_submitter: impl FnOnce(Arc<TextTokenizer>) -> Arc<FakeSubmitter>) -> Self {
        Self::with_config(test_config(), make_submitter)
    }

    fn with_config(
        config: RouterConfig,
        make_submitter: impl FnOnce(Arc<TextTokenizer>) -> Arc<FakeSubmitter>,
    ) -> Self {
        let tokenizer = Arc::new(byte_level_tokenizer());
        let submitter = make_submitter(Arc::clone(&tokenizer));
        let state = test_state(&config, Arc::clone(&tokenizer), submitter.clone());
        Self {
            router: app(state),
            submitter,
            tokenizer,
        }
    }

    /// Answers every request with `REPLY` followed by EOS.
    fn replying() -> Self {
        Self::new(|tokenizer| FakeSubmitter::replying(tokenizer, REPLY))
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
        send(&self.router, request).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, HeaderMap, Bytes) {
        send(&self.router, post(path, &body.to_string())).await
    }

    async fn get(&self, path: &str) -> (StatusCode, HeaderMap, Bytes) {
        send(&self.router, get(path)).await
    }
}

/// Sends one request through the app and reads the whole answer.
async fn send(router: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let response = router.clone().oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
    (parts.status, parts.headers, bytes)
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).expect("request")
}

fn post(path: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

fn json(bytes: &Bytes) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|error| panic!("not JSON ({error}): {}", String::from_utf8_lossy(bytes)))
}

/// Splits an SSE body into its events, checking TGI's `data:{json}\n\n` framing.
fn sse_events(bytes: &Bytes) -> Vec<Value> {
    let text = std::str::from_utf8(bytes).expect("utf-8");
    assert!(
        text.ends_with("\n\n"),
        "events end with a blank line: {text:?}"
    );
    text.trim_end_matches("\n\n")
        .split("\n\n")
        .map(|event| {
            let payload = event
                .strip_prefix("data:")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"));
            assert!(!payload.contains('\n'), "one line per event: {event:?}");
            serde_json::from_str(payload).expect("event JSON")
        })
        .collect()
}

fn assert_error_shape(
    status: StatusCode,
    bytes: &Bytes,
    expected_status: u16,
    error_type: &str,
) -> String {
    assert_eq!(
        status.as_u16(),
        expected_status,
        "{}",
        String::from_utf8_lossy(bytes)
    );
    let body = json(bytes);
    assert_eq!(body["error_type"], error_type, "{body}");
    body["error"].as_str().expect("error message").to_string()
}
