//! Tools through the HTTP routes: what reaches the scheduler (the call grammar), the answer's
//! `tool_calls`, the stream's `delta.tool_calls` pieces, refusals, and `/chat_tokenize`.

use super::*;
use crate::openai::tools::check_tools;
use crate::proto;
use crate::validation::grammar::CompileFuture;

/// A template that shows tools itself (`T`) and marks turns that called tools (`c`).
const TOOLS_TEMPLATE: &str = "{% if tools %}T{% endif %}{% for m in messages %}{{ m.role[0] }}:\
{{ m.content }}{% if m.tool_calls %}c{% endif %}{% endfor %}a:";
const CALL: &str = r#"{"name":"f","arguments":{"a":1}}"#;

fn tools() -> Value {
    json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
        "properties": {"a": {"type": "integer"}}}}}])
}

fn hi() -> Value {
    json!([{"role": "user", "content": "Hi"}])
}

fn app_replying(reply: &'static str) -> TestApp {
    TestApp::with_template(Some(TOOLS_TEMPLATE), move |tokenizer| {
        FakeSubmitter::replying(tokenizer, reply)
    })
}

async fn chat(app: &TestApp, extra: Value) -> Value {
    let mut body = json!({"messages": hi(), "tools": tools()});
    for (key, value) in extra.as_object().expect("object") {
        body[key] = value.clone();
    }
    let (status, bytes) = app.post("/v1/chat/completions", body).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    if extra["stream"] == json!(true) {
        Value::Array(sse_chunks(&bytes))
    } else {
        json_body(&bytes)
    }
}

fn assert_call(message: &Value, arguments: &str) {
    assert_eq!(message["content"], Value::Null, "{message}");
    let calls = message["tool_calls"].as_array().expect("tool_calls");
    assert_eq!(calls.len(), 1);
    let id = calls[0]["id"].as_str().expect("id");
    assert!(id.starts_with("call_"), "{id}");
    assert_eq!(
        calls[0],
        json!({"id": id, "type": "function", "function": {"name": "f", "arguments": arguments}})
    );
}

#[tokio::test]
async fn an_auto_answer_that_is_a_call_becomes_tool_calls() {
    let app = app_replying(CALL);
    let body = chat(&app, json!({})).await;
    let choice = &body["choices"][0];
    assert_call(&choice["message"], r#"{"a":1}"#);
    assert_eq!(choice["finish_reason"], "tool_calls");
    let submitted = app.submitter.submitted();
    let sampling = submitted[0].parameters.sampling.as_ref().expect("sampling");
    assert_eq!(sampling.grammar, None, "auto lets the model choose");
    let prompt = app
        .tokenizer
        .decode(&submitted[0].input_ids)
        .expect("decodes");
    assert!(
        prompt.starts_with("Tu:Hi"),
        "the template got the tools: {prompt:?}"
    );
}

#[tokio::test]
async fn an_auto_answer_in_prose_is_content() {
    let app = TestApp::with_template(Some(TOOLS_TEMPLATE), |tokenizer| {
        FakeSubmitter::replying(tokenizer, REPLY)
    });
    for stream in [false, true] {
        let body = chat(&app, json!({"stream": stream})).await;
        if stream {
            assert_eq!(
                super::chat::streamed_content(body.as_array().expect("chunks")),
                REPLY
            );
            let last = &body.as_array().expect("chunks").last().expect("chunk")["choices"][0];
            assert_eq!(last["finish_reason"], "stop");
        } else {
            let choice = &body["choices"][0];
            assert_eq!(
                choice["message"],
                json!({"role": "assistant", "content": REPLY})
            );
            assert_eq!(choice["finish_reason"], "stop");
        }
    }
}

#[tokio::test]
async fn required_and_named_choices_send_the_call_grammar() {
    let app = app_replying(CALL);
    for choice in [
        json!("required"),
        json!({"type": "function", "function": {"name": "f"}}),
    ] {
        let expected = check_tools(Some(&tools()), Some(&choice))
            .expect("valid")
            .expect("tools")
            .grammar();
        let body = chat(&app, json!({"tool_choice": choice})).await;
        assert_call(&body["choices"][0]["message"], r#"{"a":1}"#);
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
        let submitted = app.submitter.submitted();
        let sampling = submitted
            .last()
            .expect("submitted")
            .parameters
            .sampling
            .clone();
        assert_eq!(sampling.expect("sampling").grammar, expected);
    }
}

#[tokio::test]
async fn a_streamed_call_is_named_first_then_its_arguments_follow() {
    let app = app_replying(CALL);
    let chunks = chat(&app, json!({"stream": true, "tool_choice": "required"})).await;
    let deltas: Vec<&Value> = chunks
        .as_array()
        .expect("chunks")
        .iter()
        .map(|chunk| &chunk["choices"][0])
        .collect();
    assert_eq!(
        deltas[0]["delta"],
        json!({"role": "assistant", "content": null, "tool_calls": null})
    );
    let open = &deltas[1]["delta"]["tool_calls"];
    let id = open[0]["id"].as_str().expect("id");
    assert_eq!(
        open,
        &json!([{"index": 0, "id": id, "type": "function",
                 "function": {"name": "f", "arguments": ""}}])
    );
    let (last, pieces) = deltas[2..].split_last().expect("more chunks");
    assert!(pieces.len() > 1, "arguments stream as they come");
    let mut arguments = String::new();
    for piece in pieces {
        assert_eq!(piece["finish_reason"], Value::Null);
        assert_eq!(piece["delta"]["content"], Value::Null);
        let call = &piece["delta"]["tool_calls"][0];
        let keys: Vec<&String> = call.as_object().expect("call").keys().collect();
        assert_eq!(keys, ["index", "function"], "{call}");
        assert_eq!(call["function"].as_object().expect("function").len(), 1);
        arguments.push_str(call["function"]["arguments"].as_str().expect("text"));
    }
    assert_eq!(arguments, r#"{"a":1}"#, "the same as the whole answer's");
    assert_eq!(last["finish_reason"], "tool_calls");
    assert_eq!(
        last["delta"],
        json!({"role": "assistant", "content": null, "tool_calls": null})
    );
}

struct RefuseAll;

impl GrammarCompiler for RefuseAll {
    fn compile(&self, _: proto::Grammar) -> CompileFuture<'_> {
        Box::pin(async {
            Ok(proto::CompileGrammarResponse {
                error: "unsupported JSON schema: format \"uuid4\"".into(),
                ..Default::default()
            })
        })
    }
}

#[tokio::test]
async fn a_tool_schema_the_engine_refuses_is_a_422_naming_the_tool() {
    let app = TestApp::with_grammars(
        Some(TOOLS_TEMPLATE),
        |tokenizer| FakeSubmitter::replying(tokenizer, CALL),
        Arc::new(RefuseAll),
    );
    for stream in [false, true] {
        let body = json!({"messages": hi(), "tools": tools(), "tool_choice": "required",
                          "stream": stream});
        let (status, bytes) = app.post("/v1/chat/completions", body).await;
        let message = assert_openai_error(status, &bytes, 422, Some("tools"));
        assert_eq!(
            message,
            "the parameters schema of `f` cannot be enforced: unsupported JSON schema: format \
             \"uuid4\""
        );
    }
    // Auto needs no grammar: nothing to refuse.
    let body = json!({"messages": hi(), "tools": tools()});
    let (status, _) = app.post("/v1/chat/completions", body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.submitter.submitted().len(), 1);
}

#[tokio::test]
async fn a_forced_call_and_a_response_format_together_are_400() {
    let app = app_replying(CALL);
    let body = json!({"messages": hi(), "tools": tools(), "tool_choice": "required",
                      "response_format": {"type": "json_object"}});
    let (status, bytes) = app.post("/v1/chat/completions", body).await;
    assert_openai_error(status, &bytes, 400, Some("response_format"));
}

#[tokio::test]
async fn chat_tokenize_shows_the_tools_calls_and_results() {
    let app = app_replying(CALL);
    let messages = json!([
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]);
    let body = json!({"messages": messages, "tools": tools()});
    let (status, bytes) = app.post("/chat_tokenize", body.clone()).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    assert_eq!(json_body(&bytes)["templated_text"], "Tu:Hia:ct:42a:");
    // The same prompt reaches the model.
    chat(&app, json!({"messages": messages})).await;
    let submitted = app.submitter.submitted();
    let prompt = app
        .tokenizer
        .decode(&submitted[0].input_ids)
        .expect("decodes");
    assert_eq!(prompt, "Tu:Hia:ct:42a:");
    // tool_choice "none": as without tools.
    let (_, bytes) = app
        .post(
            "/chat_tokenize",
            json!({"messages": messages, "tools": tools(), "tool_choice": "none"}),
        )
        .await;
    assert_eq!(json_body(&bytes)["templated_text"], "u:Hia:ct:42a:");
}
