use serde_json::json;

use super::*;
use crate::scheduler::interface::{GenerationError, GenerationEvent};
use crate::testing::fake_submitter::{reply_events, Behaviour};

#[tokio::test]
async fn malformed_bodies_get_the_tgi_error_shape() {
    let app = TestApp::replying();
    let (status, _, bytes) = app.send(post("/generate", r#"{"inputs": "Hi""#)).await;
    assert_error_shape(status, &bytes, 400, "validation");

    let (status, _, bytes) = app.send(post("/generate", r#"{"inputs": 3}"#)).await;
    let message = assert_error_shape(status, &bytes, 422, "validation");
    assert!(message.contains("inputs"), "{message}");

    let (status, _, bytes) = app
        .send(post(
            "/generate",
            r#"{"inputs": "Hi", "parameters": {"top_k": "many"}}"#,
        ))
        .await;
    assert_error_shape(status, &bytes, 422, "validation");

    let no_content_type = Request::post("/generate")
        .body(Body::from(r#"{"inputs": "Hi"}"#))
        .expect("request");
    let (status, _, bytes) = app.send(no_content_type).await;
    assert_error_shape(status, &bytes, 415, "validation");
}

#[tokio::test]
async fn validation_errors_are_422() {
    let app = TestApp::replying();
    let body = json!({"inputs": "x".repeat(19), "parameters": {"max_new_tokens": 50}});
    let (status, _, bytes) = app.post("/generate", body).await;
    let message = assert_error_shape(status, &bytes, 422, "validation");
    assert_eq!(
        message,
        "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 64. \
         Given: 20 `inputs` tokens and 50 `max_new_tokens`"
    );
    let (status, _, bytes) = app
        .post(
            "/generate",
            json!({"inputs": "Hi", "parameters": {"grammar": {"type": "xml", "value": "<a/>"}}}),
        )
        .await;
    assert_eq!(status, 422, "{}", String::from_utf8_lossy(&bytes));
    assert!(String::from_utf8_lossy(&bytes).contains("xml"));
    assert!(
        app.submitter.submitted().is_empty(),
        "nothing invalid reaches the scheduler"
    );
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let app = TestApp::replying();
    let body = json!({"inputs": "x".repeat(10_000)}); // the test limit is 4096 bytes
    let (status, _, bytes) = app.post("/generate", body).await;
    assert_error_shape(status, &bytes, 413, "payload_too_large");
}

#[tokio::test]
async fn a_full_queue_is_429_at_once() {
    let app = TestApp::new(|_| FakeSubmitter::new(Behaviour::QueueFull));
    let (status, _, bytes) = app.post("/generate", json!({"inputs": "Hi"})).await;
    let message = assert_error_shape(status, &bytes, 429, "overloaded");
    assert!(message.starts_with("Model is overloaded"), "{message}");
}

#[tokio::test]
async fn shard_failures_are_424_and_incomplete_streams_500() {
    let failing = TestApp::new(|tokenizer| {
        FakeSubmitter::new(Behaviour::Script(Box::new(move |request| {
            let mut events = reply_events(&tokenizer, REPLY, request);
            events.truncate(2);
            events.push(GenerationEvent::Error(GenerationError::Shard(
                "NCCL timeout".into(),
            )));
            events
        })))
    });
    let (status, _, bytes) = failing.post("/generate", json!({"inputs": "Hi"})).await;
    let message = assert_error_shape(status, &bytes, 424, "generation");
    assert_eq!(
        message,
        "Request failed during generation: generation failed in the shard: NCCL timeout"
    );

    let vanishing = TestApp::new(|tokenizer| {
        FakeSubmitter::new(Behaviour::Script(Box::new(move |request| {
            let mut events = reply_events(&tokenizer, REPLY, request);
            events.truncate(2); // channel closes without a final token
            events
        })))
    });
    let (status, _, bytes) = vanishing.post("/generate", json!({"inputs": "Hi"})).await;
    assert_error_shape(status, &bytes, 500, "incomplete_generation");
}

#[tokio::test]
async fn api_key_guards_generation_but_not_operations() {
    let mut config = test_config();
    config.server.api_key = Some("s3cret".into());
    let app = TestApp::with_config(config, |tokenizer| {
        FakeSubmitter::replying(tokenizer, REPLY)
    });
    for path in ["/generate", "/generate_stream", "/", "/tokenize"] {
        let (status, _, bytes) = app.post(path, json!({"inputs": "Hi"})).await;
        assert_error_shape(status, &bytes, 401, "authentication");
    }
    let wrong = Request::post("/generate")
        .header("content-type", "application/json")
        .header("authorization", "Bearer nope")
        .body(Body::from(r#"{"inputs": "Hi"}"#))
        .expect("request");
    assert_eq!(app.send(wrong).await.0, StatusCode::UNAUTHORIZED);
    let right = Request::post("/generate")
        .header("content-type", "application/json")
        .header("authorization", "Bearer s3cret")
        .body(Body::from(r#"{"inputs": "Hi"}"#))
        .expect("request");
    assert_eq!(app.send(right).await.0, StatusCode::OK);
    for path in ["/health", "/info", "/metrics", "/api-doc/openapi.json"] {
        assert_eq!(app.get(path).await.0, StatusCode::OK, "{path} stays open");
    }
}

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    let preflight = |origin: &str| {
        Request::options("/generate")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .body(Body::empty())
            .expect("request")
    };
    let mut config = test_config();
    config.server.cors_allow_origins = vec!["https://chat.example".into()];
    let app = TestApp::with_config(config, |tokenizer| {
        FakeSubmitter::replying(tokenizer, REPLY)
    });
    let (_, headers, _) = app.send(preflight("https://chat.example")).await;
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://chat.example"
    );
    let (_, headers, _) = app.send(preflight("https://evil.example")).await;
    assert!(!headers.contains_key("access-control-allow-origin"));

    let default = TestApp::replying();
    let (_, headers, _) = default.send(preflight("https://chat.example")).await;
    assert!(
        !headers.contains_key("access-control-allow-origin"),
        "no origins, no CORS"
    );
}
