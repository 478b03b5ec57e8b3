use super::*;
use crate::testing::tiny_tokenizer::{ids_of, special_id};

fn streamed_texts(chunks: &[Value], choices: usize) -> Vec<String> {
    (0..choices)
        .map(|index| {
            chunks
                .iter()
                .flat_map(|chunk| chunk["choices"].as_array().cloned().unwrap_or_default())
                .filter(|choice| choice["index"] == index)
                .map(|choice| choice["text"].as_str().expect("text").to_string())
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn a_list_of_prompts_gives_n_choices_each() {
    let app = TestApp::replying();
    let body = json!({"model": "m", "prompt": ["Hello", "Hi"], "n": 2, "max_tokens": 30, "temperature": 0});
    let (status, bytes) = app.post("/v1/completions", body).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let body = json_body(&bytes);
    assert!(body["id"].as_str().expect("id").starts_with("cmpl-"));
    assert_eq!(body["object"], "text_completion");
    assert!(body["system_fingerprint"].is_string());
    let choices = body["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 4);
    for (index, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], index);
        assert_eq!(choice["text"], REPLY);
        assert_eq!(choice["finish_reason"], "stop");
        assert!(choice["logprobs"].is_null());
    }
    // Choices 0, 1 answer "Hello"; 2, 3 answer "Hi". Completion prompts get the BOS.
    let submitted = app.submitter.submitted();
    let bos = special_id(&app.tokenizer, BOS);
    let hello = [vec![bos], ids_of(&app.tokenizer, "Hello")].concat();
    let hi = [vec![bos], ids_of(&app.tokenizer, "Hi")].concat();
    let inputs: Vec<&Vec<u32>> = submitted.iter().map(|request| &request.input_ids).collect();
    assert_eq!(inputs, [&hello, &hello, &hi, &hi]);
    let reply_tokens = ids_of(&app.tokenizer, REPLY).len() + 1;
    assert_eq!(body["usage"]["prompt_tokens"], hello.len() + hi.len());
    assert_eq!(body["usage"]["completion_tokens"], 4 * reply_tokens);
}

#[tokio::test]
async fn default_max_tokens_is_16_and_token_prompts_are_taken_as_given() {
    let app = TestApp::replying();
    let prompt_ids = ids_of(&app.tokenizer, "Hello world");
    let (status, bytes) = app
        .post(
            "/v1/completions",
            json!({"prompt": prompt_ids, "echo": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let request = &app.submitter.submitted()[0];
    assert_eq!(request.input_ids, prompt_ids);
    assert_eq!(
        request
            .parameters
            .stopping
            .expect("stopping")
            .max_new_tokens,
        16
    );
    assert_eq!(
        json_body(&bytes)["choices"][0]["text"],
        format!("Hello world{REPLY}")
    );
}

#[tokio::test]
async fn echo_and_logprobs_whole_and_streamed() {
    let app = TestApp::replying();
    let body = json!({"prompt": "Hello", "echo": true, "logprobs": 2, "max_tokens": 40});
    let (status, bytes) = app.post("/v1/completions", body.clone()).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let whole = json_body(&bytes);
    let choice = &whole["choices"][0];
    assert_eq!(choice["text"], format!("Hello{REPLY}"));
    let logprobs = &choice["logprobs"];
    let prompt_tokens = 2; // <s> Hello
    let generated = ids_of(&app.tokenizer, REPLY).len();
    for key in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
        assert_eq!(
            logprobs[key].as_array().expect(key).len(),
            prompt_tokens + generated,
            "{key}"
        );
    }
    assert!(
        logprobs["token_logprobs"][0].is_null(),
        "the first prompt token has no logprob"
    );
    assert_eq!(logprobs["token_logprobs"][1], json!(-1.5));
    assert_eq!(
        logprobs["top_logprobs"][prompt_tokens]
            .as_object()
            .expect("alternatives")
            .len(),
        2
    );
    assert!(app.submitter.submitted()[0].parameters.prompt_logprobs);

    let mut stream = body;
    stream["stream"] = json!(true);
    let (status, bytes) = app.post("/v1/completions", stream).await;
    assert_eq!(status, StatusCode::OK);
    let chunks = sse_chunks(&bytes);
    assert_eq!(
        chunks[0]["choices"][0]["text"], "Hello",
        "the echoed prompt comes first"
    );
    assert_eq!(streamed_texts(&chunks, 1), [format!("Hello{REPLY}")]);
    let streamed_tokens: Vec<Value> = chunks
        .iter()
        .filter_map(|chunk| {
            chunk["choices"][0]["logprobs"]["tokens"]
                .as_array()
                .cloned()
        })
        .flatten()
        .collect();
    assert_eq!(
        &streamed_tokens,
        logprobs["tokens"].as_array().expect("tokens")
    );
    assert_eq!(
        chunks.last().expect("chunk")["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn streamed_choices_and_usage_match_the_whole_answer() {
    let app = TestApp::replying();
    let body = json!({"prompt": ["Hello", "Hi"], "stop": " and", "max_tokens": 30});
    let (_, bytes) = app.post("/v1/completions", body.clone()).await;
    let whole = json_body(&bytes);
    let mut stream = body;
    stream["stream"] = json!(true);
    stream["stream_options"] = json!({"include_usage": true});
    let (status, bytes) = app.post("/v1/completions", stream).await;
    assert_eq!(status, StatusCode::OK);
    let chunks = sse_chunks(&bytes);
    let texts = streamed_texts(&chunks, 2);
    assert_eq!(texts, [" world 😀", " world 😀"]);
    for (index, text) in texts.iter().enumerate() {
        assert_eq!(whole["choices"][index]["text"], *text);
    }
    let usage_chunk = chunks.last().expect("usage chunk");
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"], whole["usage"]);
}
