use serde_json::json;

use super::*;
use crate::testing::tiny_tokenizer::{ids_of, EOS};

#[tokio::test]
async fn generate_returns_text_details_and_tgi_headers() {
    let app = TestApp::replying();
    let (status, headers, body) = app
        .post(
            "/generate",
            json!({"inputs": "Hello", "parameters": {"details": true}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let body = json(&body);
    assert_eq!(body["generated_text"], REPLY);
    let details = &body["details"];
    let reply_tokens = ids_of(&app.tokenizer, REPLY).len() + 1; // + EOS
    assert_eq!(details["finish_reason"], "eos_token");
    assert_eq!(details["generated_tokens"], reply_tokens);
    assert_eq!(
        details["tokens"].as_array().expect("tokens").len(),
        reply_tokens
    );
    assert_eq!(details["seed"], Value::Null, "greedy: no seed");
    assert_eq!(details["prefill"], json!([]));
    let last = &details["tokens"][reply_tokens - 1];
    assert_eq!(
        (last["text"].as_str(), last["special"].as_bool()),
        (Some(EOS), Some(true))
    );
    assert!(details.get("top_tokens").is_none() && details.get("best_of_sequences").is_none());

    assert_eq!(headers["x-compute-type"], "cpu");
    assert_eq!(
        headers["x-generated-tokens"],
        reply_tokens.to_string().as_str()
    );
    assert_eq!(headers["x-prompt-tokens"], "2", "<s> + Hello");
    for name in [
        "x-total-time",
        "x-queue-time",
        "x-validation-time",
        "x-inference-time",
        "x-time-per-token",
    ] {
        assert!(headers.contains_key(name), "missing {name}");
    }
}

#[tokio::test]
async fn without_details_only_the_text_comes_back() {
    let app = TestApp::replying();
    let (status, _, body) = app.post("/generate", json!({"inputs": "Hello"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body), json!({"generated_text": REPLY}));
}

#[tokio::test]
async fn max_new_tokens_stop_and_full_text() {
    let app = TestApp::replying();
    let parameters = json!({"max_new_tokens": 2, "details": true});
    let (_, _, body) = app
        .post(
            "/generate",
            json!({"inputs": "Hi", "parameters": parameters}),
        )
        .await;
    let body = json(&body);
    assert_eq!(body["details"]["finish_reason"], "length");
    assert_eq!(body["details"]["generated_tokens"], 2);

    let parameters = json!({"stop": ["an"], "details": true, "return_full_text": true});
    let (_, _, body) = app
        .post(
            "/generate",
            json!({"inputs": "Hi", "parameters": parameters}),
        )
        .await;
    let body = json(&body);
    assert_eq!(
        body["generated_text"], "Hi world 😀 an",
        "prompt + text through the stop"
    );
    assert_eq!(body["details"]["finish_reason"], "stop_sequence");
}

#[tokio::test]
async fn prompt_details_and_top_tokens() {
    let app = TestApp::replying();
    let parameters = json!({"details": true, "decoder_input_details": true, "top_n_tokens": 2});
    let (status, _, body) = app
        .post(
            "/generate",
            json!({"inputs": "Hello", "parameters": parameters}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let details = &json(&body)["details"];
    let prefill = details["prefill"].as_array().expect("prefill");
    assert_eq!(prefill.len(), 2);
    assert_eq!(
        prefill[0],
        json!({"id": 256, "text": "<s>", "logprob": null})
    );
    assert_eq!(prefill[1]["text"], "Hello");
    assert_eq!(prefill[1]["logprob"], -1.5);
    let top_tokens = details["top_tokens"].as_array().expect("top tokens");
    assert_eq!(
        top_tokens.len(),
        details["generated_tokens"].as_u64().expect("count") as usize
    );
    assert!(top_tokens
        .iter()
        .all(|top| top.as_array().is_some_and(|t| t.len() == 2)));
    let submitted = app.submitter.submitted();
    assert!(submitted[0].parameters.prompt_logprobs);
    assert_eq!(submitted[0].parameters.top_n_tokens, 2);
}

#[tokio::test]
async fn best_of_returns_the_best_mean_logprob_and_the_others() {
    let app = TestApp::replying();
    let parameters = json!({"best_of": 3, "do_sample": true, "details": true});
    let (status, _, body) = app
        .post(
            "/generate",
            json!({"inputs": "Hi", "parameters": parameters}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let details = &json(&body)["details"];
    let others = details["best_of_sequences"]
        .as_array()
        .expect("best_of_sequences");
    assert_eq!(others.len(), 2);
    assert_eq!(app.submitter.submitted().len(), 3);
    let mut seeds: Vec<u64> = others
        .iter()
        .map(|o| o["seed"].as_u64().expect("seed"))
        .collect();
    seeds.push(details["seed"].as_u64().expect("seed"));
    seeds.sort_unstable();
    seeds.dedup();
    assert_eq!(seeds.len(), 3, "distinct seeds");
    let best_logprob = details["tokens"][0]["logprob"].as_f64().expect("logprob");
    for other in others {
        assert!(best_logprob >= other["tokens"][0]["logprob"].as_f64().expect("logprob"));
        assert_eq!(other["generated_text"], REPLY);
    }
}

#[tokio::test]
async fn sampling_parameters_reach_the_scheduler() {
    let app = TestApp::replying();
    let parameters = json!({"temperature": 0.5, "top_p": 0.9, "repetition_penalty": 1.2,
                            "frequency_penalty": 0.5, "seed": 7, "max_new_tokens": 3});
    let (status, _, _) = app
        .post(
            "/generate",
            json!({"inputs": "Hi", "parameters": parameters}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let request = app.submitter.submitted().remove(0);
    assert_eq!(
        request.input_ids,
        app.tokenizer.encode("Hi", None).expect("encode").get_ids()
    );
    let sampling = request.parameters.sampling.expect("sampling");
    assert!(sampling.do_sample && sampling.has_seed);
    assert_eq!(
        (sampling.seed, sampling.temperature, sampling.top_p),
        (7, 0.5, 0.9)
    );
    assert_eq!(
        (sampling.repetition_penalty, sampling.frequency_penalty),
        (1.2, 0.5)
    );
    assert_eq!(
        request
            .parameters
            .stopping
            .expect("stopping")
            .max_new_tokens,
        3
    );
}

#[tokio::test]
async fn compat_route_answers_a_one_element_list() {
    let app = TestApp::replying();
    let (status, _, body) = app
        .post("/", json!({"inputs": "Hello", "stream": false}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body), json!([{"generated_text": REPLY}]));
}

#[tokio::test]
async fn tokenize_returns_ids_and_spans() {
    let app = TestApp::replying();
    let (status, _, body) = app
        .post("/tokenize", json!({"inputs": "Hello world"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let tokens = json(&body);
    assert_eq!(
        tokens,
        json!([
            {"id": 256, "text": "", "start": 0, "stop": 0},
            {"id": ids_of(&app.tokenizer, "Hello")[0], "text": "Hello", "start": 0, "stop": 5},
            {"id": ids_of(&app.tokenizer, " world")[0], "text": " world", "start": 5, "stop": 11},
        ])
    );
}
