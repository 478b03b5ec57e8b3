//! Request budgets (`--request-timeout-s`, the `x-request-timeout-s` header), timeout
//! statuses, and keep-alive comments on streams that wait long for their first token.

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

use super::*;
use crate::scheduler::interface::{GenerationError, GenerationEvent, TimeoutPhase};
use crate::testing::fake_submitter::{reply_events, Behaviour};

const HANG_GUARD: Duration = Duration::from_secs(10);

fn post_with_timeout_header(path: &str, body: &str, seconds: &str) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .header("x-request-timeout-s", seconds)
        .body(Body::from(body.to_string()))
        .expect("request")
}

fn config_with_timeout(timeout: Option<Duration>) -> RouterConfig {
    let mut config = test_config();
    config.server.request_timeout = timeout;
    config
}

fn submitted_budget(app: &TestApp) -> Option<Duration> {
    let request = app
        .submitter
        .submitted()
        .pop()
        .expect("a submitted request");
    request
        .deadline
        .map(|deadline| deadline.duration_since(request.received_at))
}

#[tokio::test]
async fn the_budget_is_the_flag_narrowed_by_the_header() {
    let body = r#"{"inputs": "Hi"}"#;
    let replying = |config| {
        TestApp::with_config(config, |tokenizer| {
            FakeSubmitter::replying(tokenizer, REPLY)
        })
    };
    let unlimited = replying(config_with_timeout(None));
    unlimited.send(post("/generate", body)).await;
    assert_eq!(submitted_budget(&unlimited), None);
    unlimited
        .send(post_with_timeout_header("/generate", body, "1.5"))
        .await;
    assert_eq!(
        submitted_budget(&unlimited),
        Some(Duration::from_millis(1500))
    );

    let limited = replying(config_with_timeout(Some(Duration::from_secs(5))));
    for (path, request_body) in [
        ("/generate_stream", body.to_string()),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "Hi", "max_tokens": 4}).to_string(),
        ),
    ] {
        limited.send(post(path, &request_body)).await;
        assert_eq!(
            submitted_budget(&limited),
            Some(Duration::from_secs(5)),
            "{path}"
        );
        limited
            .send(post_with_timeout_header(path, &request_body, "60"))
            .await;
        assert_eq!(
            submitted_budget(&limited),
            Some(Duration::from_secs(5)),
            "{path}"
        );
        limited
            .send(post_with_timeout_header(path, &request_body, "0.25"))
            .await;
        assert_eq!(
            submitted_budget(&limited),
            Some(Duration::from_millis(250)),
            "{path}"
        );
    }
    let (status, _, bytes) = limited
        .send(post_with_timeout_header("/generate", body, "soon"))
        .await;
    let message = assert_error_shape(status, &bytes, 422, "validation");
    assert!(message.contains("x-request-timeout-s"), "{message}");
}

#[tokio::test]
async fn timeouts_are_408_while_queued_and_504_once_generating() {
    for (phase, expected_status) in [(TimeoutPhase::Queued, 408), (TimeoutPhase::Generating, 504)] {
        let app = TestApp::new(move |_| {
            FakeSubmitter::new(Behaviour::Script(Box::new(move |_| {
                vec![GenerationEvent::Error(GenerationError::TimedOut {
                    budget_s: 2.0,
                    phase,
                })]
            })))
        });
        let (status, _, bytes) = app.post("/generate", json!({"inputs": "Hi"})).await;
        let message = assert_error_shape(status, &bytes, expected_status, "timeout");
        assert!(message.contains("2.000 s"), "{message}");
        let completion = json!({"model": "tiny", "prompt": "Hi", "max_tokens": 4});
        let (status, _, bytes) = app.post("/v1/completions", completion).await;
        assert_eq!(
            status.as_u16(),
            expected_status,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
    }
}

#[tokio::test]
async fn a_stream_waiting_long_for_its_first_token_starts_with_keep_alives() {
    let mut config = test_config();
    config.server.stream_keep_alive = Duration::from_millis(20);
    let app = TestApp::with_config(config, |_| FakeSubmitter::new(Behaviour::Hold));
    let router = app.router.clone();
    let response = tokio::spawn(async move {
        router
            .oneshot(post("/generate_stream", r#"{"inputs": "Hi"}"#))
            .await
    });
    let sender = app.submitter.wait_for_held(1).await.remove(0);
    // No event yet: the response still starts, once the keep-alive interval has passed.
    let response = tokio::time::timeout(HANG_GUARD, response)
        .await
        .expect("the stream started without a token")
        .expect("join")
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    let first = body.next().await.expect("a first chunk").expect("bytes");
    assert_eq!(&first[..], b": keep-alive\n\n");
    let request = app.submitter.submitted().remove(0);
    for event in reply_events(&app.tokenizer, REPLY, &request) {
        sender.send(event).expect("receiver alive");
    }
    drop(sender);
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.expect("bytes"));
    }
    let text = String::from_utf8(rest).expect("utf-8");
    let data: String = text
        .split("\n\n")
        .filter(|event| !event.starts_with(':'))
        .map(|event| format!("{event}\n\n"))
        .collect();
    let events = sse_events(&Bytes::from(data.trim_start_matches("\n\n").to_string()));
    assert_eq!(
        events.last().expect("events")["generated_text"],
        REPLY,
        "{text}"
    );
}
