use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

use super::*;
use crate::scheduler::interface::{GenerationError, GenerationEvent, ShardFinish, Token};
use crate::testing::fake_submitter::{reply_events, Behaviour};
use crate::testing::tiny_tokenizer::ids_of;

/// Guards against a hang; not a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(10);

fn token_event(id: u32, finish: Option<ShardFinish>) -> GenerationEvent {
    GenerationEvent::Token {
        token: Token {
            id,
            logprob: -0.25,
            top_tokens: Vec::new(),
        },
        finish,
    }
}

#[tokio::test]
async fn stream_events_are_tgi_framed_and_match_generate() {
    let app = TestApp::replying();
    let body = json!({"inputs": "Hello", "parameters": {"max_new_tokens": 20}});
    let (status, headers, bytes) = app.post("/generate_stream", body.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/event-stream");
    let events = sse_events(&bytes);
    let (last, tokens) = events.split_last().expect("events");
    for (index, event) in tokens.iter().enumerate() {
        assert_eq!(event["index"], index);
        assert_eq!(event["generated_text"], Value::Null);
        assert_eq!(event["details"], Value::Null);
        assert!(event["token"]["id"].is_u64() && event["token"]["logprob"].is_f64());
    }
    let streamed: String = events
        .iter()
        .filter(|event| event["token"]["special"] == false)
        .map(|event| event["token"]["text"].as_str().expect("text"))
        .collect();
    assert_eq!(streamed, REPLY);
    assert_eq!(last["generated_text"], REPLY);
    assert_eq!(last["details"]["finish_reason"], "eos_token");
    assert_eq!(last["details"]["generated_tokens"], events.len());
    assert_eq!(last["details"]["input_length"], 2);
    assert_eq!(last["details"]["seed"], Value::Null);

    let (_, _, generated) = app.post("/generate", body).await;
    assert_eq!(json(&generated)["generated_text"], last["generated_text"]);
}

#[tokio::test]
async fn compat_route_streams_when_asked() {
    let app = TestApp::replying();
    let body = json!({"inputs": "Hello", "stream": true, "parameters": {"top_n_tokens": 1}});
    let (status, _, bytes) = app.post("/", body).await;
    assert_eq!(status, StatusCode::OK);
    let events = sse_events(&bytes);
    assert!(events.len() > 1);
    assert!(events
        .iter()
        .all(|event| event["top_tokens"].as_array().is_some_and(|t| t.len() == 1)));
    assert_eq!(events.last().expect("last")["generated_text"], REPLY);
}

#[tokio::test]
async fn errors_known_before_the_first_token_are_real_statuses() {
    let app = TestApp::replying();
    let body = json!({"inputs": "Hi", "parameters": {"best_of": 2, "do_sample": true}});
    let (status, _, bytes) = app.post("/generate_stream", body).await;
    let message = assert_error_shape(status, &bytes, 422, "validation");
    assert!(message.contains("`best_of` != 1 is not supported when streaming tokens"));

    let full = TestApp::new(|_| FakeSubmitter::new(Behaviour::QueueFull));
    let (status, _, bytes) = full.post("/generate_stream", json!({"inputs": "Hi"})).await;
    assert_error_shape(status, &bytes, 429, "overloaded");

    let failing = TestApp::new(|_| {
        FakeSubmitter::new(Behaviour::Script(Box::new(|_| {
            vec![GenerationEvent::Error(GenerationError::TooLargeForCache {
                needed_blocks: 9,
                total_blocks: 4,
            })]
        })))
    });
    let (status, _, bytes) = failing
        .post("/generate_stream", json!({"inputs": "Hi"}))
        .await;
    let message = assert_error_shape(status, &bytes, 424, "generation");
    assert!(message.contains("9 KV blocks"), "{message}");
}

#[tokio::test]
async fn an_error_after_the_first_token_is_the_last_event() {
    let app = TestApp::new(|tokenizer| {
        FakeSubmitter::new(Behaviour::Script(Box::new(move |request| {
            let mut events = reply_events(&tokenizer, REPLY, request);
            events.truncate(3); // PrefillDone + two tokens, no finish
            events.push(GenerationEvent::Error(GenerationError::Shard(
                "shard crashed".into(),
            )));
            events
        })))
    });
    let (status, _, bytes) = app.post("/generate_stream", json!({"inputs": "Hi"})).await;
    assert_eq!(status, StatusCode::OK);
    let events = sse_events(&bytes);
    assert_eq!(events.len(), 3);
    let last = &events[2];
    assert_eq!(last["error_type"], "generation");
    assert!(
        last["error"]
            .as_str()
            .is_some_and(|e| e.contains("shard crashed")),
        "{last}"
    );
}

#[tokio::test]
async fn dropping_the_response_body_cancels_the_request() {
    let app = TestApp::new(|_| FakeSubmitter::new(Behaviour::Hold));
    let router = app.router.clone();
    let response = tokio::spawn(async move {
        router
            .oneshot(post("/generate_stream", r#"{"inputs": "Hi"}"#))
            .await
    });
    let sender = app.submitter.wait_for_held(1).await.remove(0);
    let prefill = GenerationEvent::PrefillDone {
        prompt_logprobs: Vec::new(),
        queue_time: Duration::ZERO,
    };
    sender.send(prefill).expect("receiver alive");
    sender
        .send(token_event(ids_of(&app.tokenizer, "Hello")[0], None))
        .expect("receiver alive");
    let response = response.await.expect("join").expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);

    let mut body = response.into_body().into_data_stream();
    let first = body.next().await.expect("a first event").expect("bytes");
    assert!(first.starts_with(b"data:{\"index\":0"), "{first:?}");
    assert!(
        !sender.is_closed(),
        "the request is still wanted while the client reads"
    );
    drop(body); // the client disconnects
    tokio::time::timeout(HANG_GUARD, sender.closed())
        .await
        .expect("receiver dropped => cancelled");
}

#[tokio::test]
async fn a_stop_sequence_ends_the_stream_and_cancels_the_request() {
    let app = TestApp::new(|_| FakeSubmitter::new(Behaviour::Hold));
    let router = app.router.clone();
    let body = r#"{"inputs": "Hi", "parameters": {"stop": ["lo w"]}}"#;
    let response =
        tokio::spawn(async move { router.oneshot(post("/generate_stream", body)).await });
    let sender = app.submitter.wait_for_held(1).await.remove(0);
    for id in ids_of(&app.tokenizer, "Hello world") {
        sender.send(token_event(id, None)).expect("receiver alive");
    }
    let response = response.await.expect("join").expect("infallible");
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let events = sse_events(&bytes);
    let last = events.last().expect("events");
    assert_eq!(last["generated_text"], "Hello w");
    assert_eq!(last["details"]["finish_reason"], "stop_sequence");
    tokio::time::timeout(HANG_GUARD, sender.closed())
        .await
        .expect("cancelled after the stop");
}
