//! HTTP tests of the OpenAI routes: the real `app()` driven with `oneshot`, the scheduler
//! replaced by the fake submitter, a tiny tokenizer and a chat template in a scratch model
//! directory.

mod chat;
mod completions;
mod errors;
mod shaping;
mod tgi_routes;
mod tools;

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::http::{app, AppState};
use crate::testing::fake_submitter::FakeSubmitter;
use crate::testing::test_config;
use crate::testing::tiny_tokenizer::{byte_level_tokenizer, BOS, EOS};
use crate::tokenizer::TextTokenizer;
use crate::validation::grammar::{accept_all, GrammarCompiler};

/// What the fake "model" answers to every prompt (then EOS).
const REPLY: &str = " world 😀 and more";
/// A compact template (the test limits are small) using the tokenizer's special tokens.
const TEMPLATE: &str =
    "{{ bos_token }}{% for m in messages %}{{ m.role[0] }}:{{ m.content.strip() }}\
{{ eos_token }}{% endfor %}{% if add_generation_prompt %}a:{% endif %}";

/// A scratch model directory with a tokenizer_config.json; removed on drop.
struct ModelDir(PathBuf);

impl ModelDir {
    fn new(config: &Value) -> Self {
        let unique = format!(
            "ferrite-openai-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        );
        let path = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&path).expect("create temp dir");
        std::fs::write(path.join("tokenizer_config.json"), config.to_string()).expect("write");
        Self(path)
    }
}

impl Drop for ModelDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct TestApp {
    router: Router,
    submitter: Arc<FakeSubmitter>,
    tokenizer: Arc<TextTokenizer>,
    _model_dir: ModelDir,
}

impl TestApp {
    fn with_template(
        template: Option<&str>,
        make_submitter: impl FnOnce(Arc<TextTokenizer>) -> Arc<FakeSubmitter>,
    ) -> Self {
        Self::with_grammars(template, make_submitter, accept_all())
    }

    /// As `with_template`, with `grammars` compiling (or refusing) the requests' grammars.
    fn with_grammars(
        template: Option<&str>,
        make_submitter: impl FnOnce(Arc<TextTokenizer>) -> Arc<FakeSubmitter>,
        grammars: Arc<dyn GrammarCompiler>,
    ) -> Self {
        let mut tokenizer_config = json!({"bos_token": BOS, "eos_token": EOS});
        if let Some(template) = template {
            tokenizer_config["chat_template"] = json!(template);
        }
        let model_dir = ModelDir::new(&tokenizer_config);
        let mut config = test_config();
        config.model.tokenizer_dir = model_dir.0.clone();
        let tokenizer = Arc::new(byte_level_tokenizer());
        let submitter = make_submitter(Arc::clone(&tokenizer));
        let state =
            AppState::with_grammars(&config, Arc::clone(&tokenizer), submitter.clone(), grammars);
        Self {
            router: app(state),
            submitter,
            tokenizer,
            _model_dir: model_dir,
        }
    }

    fn new(make_submitter: impl FnOnce(Arc<TextTokenizer>) -> Arc<FakeSubmitter>) -> Self {
        Self::with_template(Some(TEMPLATE), make_submitter)
    }

    /// Answers every request with `REPLY` followed by EOS.
    fn replying() -> Self {
        Self::new(|tokenizer| FakeSubmitter::replying(tokenizer, REPLY))
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Bytes) {
        self.send(post(path, &body.to_string())).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Bytes) {
        self.send(Request::get(path).body(Body::empty()).expect("request"))
            .await
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, Bytes) {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
        (parts.status, bytes)
    }
}

fn post(path: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

fn json_body(bytes: &Bytes) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|error| panic!("not JSON ({error}): {}", String::from_utf8_lossy(bytes)))
}

/// An OpenAI stream's JSON events, checking the framing: `data: ` events, each one line,
/// ending with `data: [DONE]`.
fn sse_chunks(bytes: &Bytes) -> Vec<Value> {
    let text = std::str::from_utf8(bytes).expect("utf-8");
    let events: Vec<&str> = text
        .strip_suffix("\n\n")
        .unwrap_or_else(|| panic!("events end with a blank line: {text:?}"))
        .split("\n\n")
        .collect();
    let (done, chunks) = events.split_last().expect("at least [DONE]");
    assert_eq!(*done, "data: [DONE]");
    chunks
        .iter()
        .map(|event| {
            let payload = event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"));
            assert!(!payload.contains('\n'), "one line per event: {event:?}");
            serde_json::from_str(payload).expect("event JSON")
        })
        .collect()
}

/// Checks OpenAI's error shape and status; returns the message.
fn assert_openai_error(
    status: StatusCode,
    bytes: &Bytes,
    expected_status: u16,
    param: Option<&str>,
) -> String {
    assert_eq!(
        status.as_u16(),
        expected_status,
        "{}",
        String::from_utf8_lossy(bytes)
    );
    let body = json_body(bytes);
    let error = &body["error"];
    let keys: Vec<&String> = error.as_object().expect("error object").keys().collect();
    assert_eq!(keys.len(), 4, "message, type, param, code: {error}");
    assert!(
        error["type"].is_string() && error.get("code").is_some(),
        "{error}"
    );
    assert_eq!(error["param"].as_str(), param, "{error}");
    error["message"].as_str().expect("message").to_string()
}
