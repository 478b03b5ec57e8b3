use super::*;
use crate::testing::tiny_tokenizer::{ids_of, special_id};

fn user(content: &str) -> Value {
    json!([{"role": "system", "content": "Be brief. "}, {"role": "user", "content": content}])
}

/// Content of a chat stream: the concatenated deltas.
pub(super) fn streamed_content(chunks: &[Value]) -> String {
    chunks
        .iter()
        .flat_map(|chunk| chunk["choices"].as_array().cloned().unwrap_or_default())
        .filter_map(|choice| choice["delta"]["content"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn whole_answer_is_openai_shaped() {
    let app = TestApp::replying();
    let (status, bytes) = app
        .post(
            "/v1/chat/completions",
            json!({"model": "x", "messages": user("Hi")}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let body = json_body(&bytes);
    assert!(body["id"].as_str().expect("id").starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().expect("created") > 1_600_000_000);
    assert_eq!(
        body["model"], "tiny",
        "the served model, whatever the request named"
    );
    assert!(body["system_fingerprint"]
        .as_str()
        .is_some_and(|fingerprint| !fingerprint.is_empty()));
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(
        choice["message"],
        json!({"role": "assistant", "content": REPLY})
    );
    assert_eq!(choice["finish_reason"], "stop");
    assert!(
        choice.get("logprobs").is_some_and(Value::is_null),
        "the key is there, null"
    );

    // The template wrote the BOS: the prompt is tokenized without adding another one.
    let rendered = "<s>s:Be brief.</s>u:Hi</s>a:";
    let submitted = app.submitter.submitted();
    assert_eq!(submitted.len(), 1);
    assert_eq!(submitted[0].input_ids, ids_of(&app.tokenizer, rendered));
    let bos = special_id(&app.tokenizer, BOS);
    assert_eq!(
        submitted[0]
            .input_ids
            .iter()
            .filter(|&&id| id == bos)
            .count(),
        1
    );

    let reply_tokens = ids_of(&app.tokenizer, REPLY).len() + 1; // + EOS
    let prompt_tokens = submitted[0].input_ids.len();
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": prompt_tokens, "completion_tokens": reply_tokens,
               "total_tokens": prompt_tokens + reply_tokens})
    );
    let ids: std::collections::HashSet<String> = futures::future::join_all(
        (0..3).map(|_| app.post("/v1/chat/completions", json!({"messages": user("Hi")}))),
    )
    .await
    .iter()
    .map(|(_, bytes)| json_body(bytes)["id"].as_str().expect("id").to_string())
    .collect();
    assert_eq!(ids.len(), 3, "ids are unique");
}

#[tokio::test]
async fn stream_matches_the_whole_answer_chunk_by_chunk() {
    let app = TestApp::replying();
    let body = json!({"messages": user("Hi"), "temperature": 0, "stream": true,
                      "stream_options": {"include_usage": true}});
    let (status, bytes) = app.post("/v1/chat/completions", body).await;
    assert_eq!(status, StatusCode::OK);
    let chunks = sse_chunks(&bytes);
    let first = &chunks[0];
    assert_eq!(
        first["choices"][0]["delta"],
        json!({"role": "assistant", "content": "", "tool_calls": null})
    );
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], first["id"], "one id per stream");
        assert!(chunk["system_fingerprint"].is_string());
        for choice in chunk["choices"].as_array().expect("choices") {
            assert_eq!(
                choice["delta"]["role"], "assistant",
                "the TGI client needs the role"
            );
            assert!(choice["delta"]
                .get("tool_calls")
                .is_some_and(Value::is_null));
        }
    }
    let (usage_chunk, rest) = chunks.split_last().expect("chunks");
    assert_eq!(usage_chunk["choices"], json!([]));
    assert!(rest.iter().all(|chunk| chunk["usage"].is_null()));
    let finish: Vec<&Value> = rest
        .iter()
        .map(|chunk| &chunk["choices"][0]["finish_reason"])
        .collect();
    assert_eq!(finish.last().copied(), Some(&json!("stop")));
    assert!(finish[..finish.len() - 1]
        .iter()
        .all(|reason| reason.is_null()));
    assert_eq!(streamed_content(&chunks), REPLY);

    let (_, whole) = app
        .post(
            "/v1/chat/completions",
            json!({"messages": user("Hi"), "temperature": 0}),
        )
        .await;
    let whole = json_body(&whole);
    assert_eq!(
        usage_chunk["usage"], whole["usage"],
        "usage agrees between stream and whole"
    );
}

#[tokio::test]
async fn stop_sequences_are_left_out_and_max_tokens_gives_length() {
    let app = TestApp::replying();
    for stream in [false, true] {
        let body = json!({"messages": user("Hi"), "stop": [" and", "zzz"], "stream": stream});
        let (status, bytes) = app.post("/v1/chat/completions", body).await;
        assert_eq!(status, StatusCode::OK);
        let (content, finish) = if stream {
            let chunks = sse_chunks(&bytes);
            let finish = chunks.last().expect("chunk")["choices"][0]["finish_reason"].clone();
            (streamed_content(&chunks), finish)
        } else {
            let body = json_body(&bytes);
            let choice = &body["choices"][0];
            (
                choice["message"]["content"]
                    .as_str()
                    .expect("content")
                    .to_string(),
                choice["finish_reason"].clone(),
            )
        };
        assert_eq!(content, " world 😀", "stream: {stream}");
        assert_eq!(finish, "stop");
    }
    let (_, bytes) = app
        .post(
            "/v1/chat/completions",
            json!({"messages": user("Hi"), "max_tokens": 1}),
        )
        .await;
    let body = json_body(&bytes);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 1);
    let submitted = app.submitter.submitted();
    let stopping = submitted
        .last()
        .expect("submitted")
        .parameters
        .stopping
        .expect("stopping");
    assert_eq!(stopping.max_new_tokens, 1);
}

#[tokio::test]
async fn n_choices_are_independent_samples() {
    let app = TestApp::replying();
    let body = json!({"messages": user("Hi"), "n": 3, "temperature": 0.8, "seed": 11});
    let (status, bytes) = app.post("/v1/chat/completions", body).await;
    assert_eq!(status, StatusCode::OK);
    let body = json_body(&bytes);
    let indexes: Vec<u64> = body["choices"]
        .as_array()
        .expect("choices")
        .iter()
        .map(|c| c["index"].as_u64().expect("index"))
        .collect();
    assert_eq!(indexes, [0, 1, 2]);
    let seeds: Vec<(u64, bool)> = app
        .submitter
        .submitted()
        .iter()
        .map(|request| {
            let sampling = request.parameters.sampling.clone().expect("sampling");
            (sampling.seed, sampling.do_sample)
        })
        .collect();
    assert_eq!(seeds, [(11, true), (12, true), (13, true)]);
    let reply_tokens = ids_of(&app.tokenizer, REPLY).len() as u64 + 1;
    assert_eq!(body["usage"]["completion_tokens"], 3 * reply_tokens);
    let prompt_tokens = app.submitter.submitted()[0].input_ids.len() as u64;
    assert_eq!(
        body["usage"]["prompt_tokens"], prompt_tokens,
        "the prompt counts once"
    );

    let stream = json!({"messages": user("Hi"), "n": 2, "stream": true});
    let (_, bytes) = app.post("/v1/chat/completions", stream).await;
    let chunks = sse_chunks(&bytes);
    for index in 0..2 {
        let of_choice: Vec<Value> = chunks
            .iter()
            .filter(|chunk| chunk["choices"][0]["index"] == index)
            .cloned()
            .collect();
        assert_eq!(streamed_content(&of_choice), REPLY, "choice {index}");
    }
}

#[tokio::test]
async fn logprobs_with_top_alternatives() {
    let app = TestApp::replying();
    let body = json!({"messages": user("Hi"), "logprobs": true, "top_logprobs": 2, "logit_bias": {"5": -100}});
    let (status, bytes) = app.post("/v1/chat/completions", body).await;
    assert_eq!(status, StatusCode::OK);
    let body = json_body(&bytes);
    let content = body["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("content")
        .clone();
    // One entry per generated text token (EOS is not part of the content).
    assert_eq!(content.len(), ids_of(&app.tokenizer, REPLY).len());
    for entry in &content {
        assert!(entry["logprob"].as_f64().expect("logprob") <= 0.0);
        assert_eq!(entry["top_logprobs"].as_array().expect("top").len(), 2);
        let bytes: Vec<u8> = entry["bytes"]
            .as_array()
            .expect("bytes")
            .iter()
            .map(|b| b.as_u64().expect("byte") as u8)
            .collect();
        assert_eq!(bytes, entry["token"].as_str().expect("token").as_bytes());
    }
    let request = &app.submitter.submitted()[0];
    assert_eq!(request.parameters.top_n_tokens, 2);
    let sampling = request.parameters.sampling.clone().expect("sampling");
    assert_eq!(
        sampling.logit_bias,
        std::collections::HashMap::from([(5, -100.0)])
    );

    let stream =
        json!({"messages": user("Hi"), "logprobs": true, "top_logprobs": 1, "stream": true});
    let (_, bytes) = app.post("/v1/chat/completions", stream).await;
    let streamed: usize = sse_chunks(&bytes)
        .iter()
        .filter_map(|chunk| {
            chunk["choices"][0]["logprobs"]["content"]
                .as_array()
                .map(Vec::len)
        })
        .sum();
    assert_eq!(streamed, content.len());
}

#[tokio::test]
async fn models_lists_the_served_model() {
    let app = TestApp::replying();
    let (status, bytes) = app.get("/v1/models").await;
    assert_eq!(status, StatusCode::OK);
    let body = json_body(&bytes);
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], "tiny");
    assert_eq!(body["data"][0]["object"], "model");
    assert_eq!(body["data"][0]["owned_by"], "ferrite");
    let (status, _) = app.get("/v1/models/tiny").await;
    assert_eq!(status, StatusCode::OK);
    let (status, bytes) = app.get("/v1/models/other").await;
    assert_openai_error(status, &bytes, 404, Some("model"));
}
