//! TGI's routes built on the chat template and the OpenAI handlers: `/chat_tokenize` and
//! SageMaker's `/invocations`; `--max-client-batch-size` on `/v1/completions`.

use super::*;

fn messages() -> Value {
    json!([{"role": "system", "content": "Be brief. "}, {"role": "user", "content": "Hi"}])
}

#[tokio::test]
async fn chat_tokenize_returns_the_prompt_chat_completions_sends() {
    let app = TestApp::replying();
    let (status, bytes) = app
        .post(
            "/chat_tokenize",
            json!({"model": "x", "messages": messages()}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let body = json_body(&bytes);
    let templated = body["templated_text"].as_str().expect("templated_text");
    assert_eq!(templated, "<s>s:Be brief.</s>u:Hi</s>a:");
    let tokens = body["tokenize_response"].as_array().expect("token list");
    let ids: Vec<u32> = tokens
        .iter()
        .map(|token| token["id"].as_u64().expect("id") as u32)
        .collect();
    for token in tokens {
        let (start, stop) = (
            token["start"].as_u64().expect("start"),
            token["stop"].as_u64().expect("stop"),
        );
        assert_eq!(
            token["text"],
            templated[start as usize..stop as usize],
            "{token}"
        );
    }
    // The very ids /v1/chat/completions submits for the same messages.
    let (status, _) = app
        .post(
            "/v1/chat/completions",
            json!({"messages": messages(), "max_tokens": 5}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.submitter.submitted()[0].input_ids, ids);
}

#[tokio::test]
async fn chat_tokenize_refusals_are_in_tgi_shape() {
    let without_template = TestApp::with_template(None, |t| FakeSubmitter::replying(t, REPLY));
    let (status, bytes) = without_template
        .post("/chat_tokenize", json!({"messages": messages()}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let body = json_body(&bytes);
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("no chat template"),
        "{body}"
    );
    assert_eq!(body["error_type"], "validation");

    let app = TestApp::replying();
    let (status, bytes) = app.post("/chat_tokenize", json!({"messages": []})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(json_body(&bytes)["error"]
        .as_str()
        .expect("error")
        .contains("at least one message"));
    let (status, _) = app.post("/chat_tokenize", json!({"prompt": "x"})).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "messages are required"
    );
    assert!(
        app.submitter.submitted().is_empty(),
        "tokenizing generates nothing"
    );
}

#[tokio::test]
async fn invocations_dispatch_by_the_body_shape() {
    let app = TestApp::replying();
    let (status, bytes) = app
        .post(
            "/invocations",
            json!({"inputs": "Hello", "parameters": {"max_new_tokens": 30}}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let generated = json_body(&bytes);
    assert_eq!(
        generated[0]["generated_text"], REPLY,
        "`/`'s one-element list"
    );

    let (status, bytes) = app
        .post("/invocations", json!({"messages": messages()}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let chat = json_body(&bytes);
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["choices"][0]["message"]["content"], REPLY);

    let (status, bytes) = app
        .post("/invocations", json!({"prompt": "Hello", "max_tokens": 30}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let completion = json_body(&bytes);
    assert_eq!(completion["object"], "text_completion");
    assert_eq!(completion["choices"][0]["text"], REPLY);

    let (status, bytes) = app
        .post(
            "/invocations",
            json!({"messages": messages(), "stream": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let chunks = sse_chunks(&bytes);
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(app.submitter.submitted().len(), 4);
}

#[tokio::test]
async fn invocations_refuse_bodies_of_no_known_shape() {
    let app = TestApp::replying();
    let (status, bytes) = app.post("/invocations", json!({"text": "Hello"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let body = json_body(&bytes);
    assert!(
        body["error"].as_str().expect("error").contains("`inputs`"),
        "{body}"
    );
    let (status, _) = app.post("/invocations", json!({"inputs": 3})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, bytes) = app
        .post("/invocations", json!({"messages": "not a list"}))
        .await;
    assert_openai_error(status, &bytes, 422, None);
    let (status, _) = app.send(post("/invocations", "{not json")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(app.submitter.submitted().is_empty());
}

#[tokio::test]
async fn completions_take_at_most_max_client_batch_size_prompts() {
    let app = TestApp::replying();
    let prompts: Vec<String> = (0..5).map(|i| format!("p{i}")).collect();
    let (status, bytes) = app
        .post(
            "/v1/completions",
            json!({"prompt": prompts, "max_tokens": 5}),
        )
        .await;
    let message = assert_openai_error(status, &bytes, 400, Some("prompt"));
    assert_eq!(
        message,
        "Number of prompts exceeds the maximum allowed batch size of 4. Given: 5"
    );
    let (status, _) = app
        .post(
            "/v1/completions",
            json!({"prompt": &prompts[..4], "max_tokens": 5}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}
