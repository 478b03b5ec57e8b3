use std::time::Duration;

use super::*;
use crate::scheduler::interface::{GenerationError, GenerationEvent, Token};
use crate::testing::fake_submitter::Behaviour;
use crate::testing::tiny_tokenizer::ids_of;

/// Guards against a hang; not a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(10);

fn hi() -> Value {
    json!([{"role": "user", "content": "Hi"}])
}

#[tokio::test]
async fn bad_parameters_are_openai_errors_before_any_byte_of_a_stream() {
    let app = TestApp::replying();
    for stream in [false, true] {
        let cases = [
            (
                json!({"messages": hi(), "temperature": 5}),
                400,
                Some("temperature"),
            ),
            (
                json!({"messages": hi(), "tools": [{"type": "function"}]}),
                400,
                Some("tools"),
            ),
            (
                json!({"messages": hi(), "tool_choice": {"type": "function",
                       "function": {"name": "nowhere"}}}),
                400,
                Some("tool_choice"),
            ),
            (
                json!({"messages": hi(), "response_format": {"type": "xml"}}),
                400,
                Some("response_format"),
            ),
            (json!({"messages": []}), 400, Some("messages")),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                400,
                Some("messages"),
            ),
            (
                json!({"messages": hi(), "max_tokens": 1000}),
                400,
                Some("max_tokens"),
            ),
        ];
        for (mut body, status, param) in cases {
            body["stream"] = json!(stream);
            let (got, bytes) = app.post("/v1/chat/completions", body.clone()).await;
            assert_openai_error(got, &bytes, status, param);
        }
    }
    let (status, bytes) = app
        .post("/v1/completions", json!({"prompt": "", "stream": true}))
        .await;
    assert_openai_error(status, &bytes, 400, Some("prompt"));
    assert!(
        app.submitter.submitted().is_empty(),
        "nothing invalid reached the scheduler"
    );
}

#[tokio::test]
async fn length_errors_state_the_limits() {
    let app = TestApp::replying();
    let long_prompt = "ab ".repeat(40);
    let (status, bytes) = app
        .post("/v1/completions", json!({"prompt": long_prompt}))
        .await;
    let message = assert_openai_error(status, &bytes, 400, Some("prompt"));
    assert!(message.contains("32 tokens"), "{message}");
    let (status, bytes) = app
        .post(
            "/v1/completions",
            json!({"prompt": "Hi", "max_tokens": 100}),
        )
        .await;
    let message = assert_openai_error(status, &bytes, 400, Some("max_tokens"));
    assert!(
        message.contains("maximum context length is 64 tokens"),
        "{message}"
    );
}

#[tokio::test]
async fn malformed_bodies_are_openai_shaped() {
    let app = TestApp::replying();
    let (status, bytes) = app.send(post("/v1/chat/completions", "{not json")).await;
    assert_openai_error(status, &bytes, 400, None);
    let (status, bytes) = app
        .post(
            "/v1/completions",
            json!({"prompt": "x", "max_tokens": "many"}),
        )
        .await;
    assert_openai_error(status, &bytes, 422, None);
}

#[tokio::test]
async fn chat_without_template_or_with_a_refusing_template_is_422() {
    let app = TestApp::with_template(None, |tokenizer| FakeSubmitter::replying(tokenizer, REPLY));
    let (status, bytes) = app
        .post("/v1/chat/completions", json!({"messages": hi()}))
        .await;
    let message = assert_openai_error(status, &bytes, 422, Some("messages"));
    assert!(message.contains("no chat template"), "{message}");
    let (status, _) = app.post("/v1/completions", json!({"prompt": "Hi"})).await;
    assert_eq!(status, StatusCode::OK, "completions need no template");

    let strict = "{% if messages[0].role != 'system' %}{{ raise_exception('a system message must come first') }}{% endif %}";
    let app = TestApp::with_template(Some(strict), |tokenizer| {
        FakeSubmitter::replying(tokenizer, REPLY)
    });
    let (status, bytes) = app
        .post(
            "/v1/chat/completions",
            json!({"messages": hi(), "stream": true}),
        )
        .await;
    let message = assert_openai_error(status, &bytes, 422, Some("messages"));
    assert!(
        message.ends_with("a system message must come first"),
        "{message}"
    );
}

#[tokio::test]
async fn full_queue_is_429_even_for_streams() {
    let app = TestApp::new(|_| FakeSubmitter::new(Behaviour::QueueFull));
    for stream in [false, true] {
        let (status, bytes) = app
            .post(
                "/v1/chat/completions",
                json!({"messages": hi(), "stream": stream}),
            )
            .await;
        assert_openai_error(status, &bytes, 429, None);
        assert_eq!(json_body(&bytes)["error"]["type"], "rate_limit_error");
    }
}

#[tokio::test]
async fn a_failure_mid_stream_ends_with_an_error_event_and_done() {
    let app = TestApp::new(|_| FakeSubmitter::new(Behaviour::Hold));
    let request = app.post(
        "/v1/chat/completions",
        json!({"messages": hi(), "stream": true}),
    );
    let drive = async {
        let senders = app.submitter.wait_for_held(1).await;
        let id = ids_of(&app.tokenizer, "Hello")[0];
        let token = Token {
            id,
            logprob: -0.1,
            top_tokens: Vec::new(),
        };
        let _ = senders[0].send(GenerationEvent::Token {
            token,
            finish: None,
        });
        let _ = senders[0].send(GenerationEvent::Error(GenerationError::Shard(
            "boom".into(),
        )));
    };
    let ((status, bytes), ()) =
        tokio::time::timeout(HANG_GUARD, futures::future::join(request, drive))
            .await
            .expect("no hang");
    assert_eq!(status, StatusCode::OK, "the stream had started");
    let chunks = sse_chunks(&bytes);
    let last = chunks.last().expect("error event");
    assert!(
        last["error"]["message"]
            .as_str()
            .expect("message")
            .contains("boom"),
        "{last}"
    );
    assert_eq!(last["error"]["type"], "server_error");
    assert!(chunks
        .iter()
        .any(|chunk| chunk["choices"][0]["delta"]["content"] == "Hello"));
}

#[tokio::test]
async fn a_stop_sequence_cancels_its_choice() {
    let app = TestApp::new(|_| FakeSubmitter::new(Behaviour::Hold));
    let body = json!({"messages": hi(), "stop": "world", "n": 2, "temperature": 0});
    let request = app.post("/v1/chat/completions", body);
    let drive = async {
        let senders = app.submitter.wait_for_held(2).await;
        for sender in &senders {
            for id in ids_of(&app.tokenizer, "Hello world") {
                let token = Token {
                    id,
                    logprob: -0.1,
                    top_tokens: Vec::new(),
                };
                let _ = sender.send(GenerationEvent::Token {
                    token,
                    finish: None,
                });
            }
        }
        senders
    };
    let ((status, bytes), senders) =
        tokio::time::timeout(HANG_GUARD, futures::future::join(request, drive))
            .await
            .expect("no hang: the stop sequence ends each choice");
    assert_eq!(status, StatusCode::OK);
    let body = json_body(&bytes);
    for index in 0..2 {
        assert_eq!(body["choices"][index]["message"]["content"], "Hello ");
        assert_eq!(body["choices"][index]["finish_reason"], "stop");
    }
    assert!(
        senders.iter().all(|sender| sender.is_closed()),
        "both requests were cancelled"
    );
}
