use serde_json::json;

use super::*;
use crate::testing::test_config;

const VOCAB_SIZE: usize = 300;

fn chat(body: serde_json::Value) -> Result<GenerationOptions, OpenAiError> {
    let mut body = body;
    body["messages"] = json!([{"role": "user", "content": "Hi"}]);
    let request: ChatCompletionRequest = serde_json::from_value(body).expect("parses");
    check_chat(&request, &test_config().limits, VOCAB_SIZE).map(|options| options.generation)
}

fn completion(body: serde_json::Value) -> Result<GenerationOptions, OpenAiError> {
    let mut body = body;
    body["prompt"] = json!("Hi");
    let request: CompletionRequest = serde_json::from_value(body).expect("parses");
    check_completion(&request, &test_config().limits, VOCAB_SIZE)
}

/// The parameter a refusal names, and its status.
fn refused(result: Result<GenerationOptions, OpenAiError>) -> (Option<String>, u16) {
    let error = result.expect_err("must be refused");
    (error.body().error.param, error.status().as_u16())
}

#[test]
fn temperature_zero_is_greedy_and_the_default_samples() {
    let greedy = chat(json!({"temperature": 0.0, "top_p": 1.0})).expect("valid");
    assert!(!greedy.sampling.do_sample);
    assert!(!greedy.sampling.has_seed);
    let default = chat(json!({})).expect("valid");
    assert!(
        default.sampling.do_sample,
        "OpenAI samples at temperature 1 by default"
    );
    assert_eq!(default.sampling.temperature, 1.0);
    assert!(
        default.sampling.has_seed,
        "sampled choices always carry a seed"
    );
    let sampled = chat(json!({"temperature": 0.7, "top_p": 0.9, "seed": 42})).expect("valid");
    assert_eq!(
        (sampled.sampling.temperature, sampled.sampling.top_p),
        (0.7, 0.9)
    );
    assert_eq!(sampled.sampling.seed, 42);
}

#[test]
fn each_choice_samples_with_its_own_seed() {
    let options = chat(json!({"n": 3, "seed": 7, "max_tokens": 5})).expect("valid");
    let seeds: Vec<u64> = (0..3)
        .map(|choice| {
            options
                .request_parameters(5, choice)
                .sampling
                .expect("sampling")
                .seed
        })
        .collect();
    assert_eq!(seeds, [7, 8, 9]);
    let parameters = options.request_parameters(5, 0);
    assert_eq!(parameters.stopping.expect("stopping").max_new_tokens, 5);
}

#[test]
fn penalties_and_logit_bias_reach_the_shard() {
    let options = chat(json!({
        "presence_penalty": 0.5, "frequency_penalty": -1.0, "logit_bias": {"5": -100, "17": 2.5}
    }))
    .expect("valid");
    assert_eq!(options.sampling.presence_penalty, 0.5);
    assert_eq!(options.sampling.frequency_penalty, -1.0);
    assert_eq!(
        options.sampling.logit_bias,
        HashMap::from([(5, -100.0), (17, 2.5)])
    );
    assert_eq!(
        refused(chat(json!({"logit_bias": {"300": 1}}))),
        (Some("logit_bias".into()), 400)
    );
    assert_eq!(
        refused(chat(json!({"logit_bias": {"x": 1}}))),
        (Some("logit_bias".into()), 400)
    );
    assert_eq!(
        refused(chat(json!({"logit_bias": {"1": 101}}))),
        (Some("logit_bias".into()), 400)
    );
    // The text-generation client's list form is not OpenAI's.
    assert_eq!(
        refused(chat(json!({"logit_bias": [0.5]}))),
        (Some("logit_bias".into()), 400)
    );
}

#[test]
fn out_of_range_values_are_400_naming_the_parameter() {
    let cases = [
        (json!({"temperature": 2.5}), "temperature"),
        (json!({"top_p": 0.0}), "top_p"),
        (json!({"top_p": 1.5}), "top_p"),
        (json!({"presence_penalty": 3}), "presence_penalty"),
        (json!({"frequency_penalty": -2.5}), "frequency_penalty"),
        (json!({"n": 0}), "n"),
        (json!({"n": 65}), "n"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"max_completion_tokens": 0}), "max_completion_tokens"),
        (json!({"stop": ["a", "b", "c"]}), "stop"),
        (json!({"stop": ""}), "stop"),
        (json!({"top_logprobs": 2}), "top_logprobs"),
        (json!({"logprobs": true, "top_logprobs": 4}), "top_logprobs"),
        (
            json!({"stream_options": {"include_usage": true}}),
            "stream_options",
        ),
    ];
    for (body, param) in cases {
        assert_eq!(
            refused(chat(body.clone())),
            (Some(param.to_string()), 400),
            "{body}"
        );
    }
}

#[test]
fn unsupported_features_are_422() {
    for (body, param) in [
        (json!({"tools": [{"type": "function"}]}), "tools"),
        (json!({"tool_choice": "required"}), "tool_choice"),
    ] {
        assert_eq!(refused(chat(body)), (Some(param.to_string()), 400));
    }
    assert!(chat(json!({"tool_choice": "none", "tools": null})).is_ok());
    assert!(chat(json!({"tools": []})).is_ok());
    assert!(chat(json!({"tool_choice": "auto"})).is_ok());
    assert!(chat(json!({"response_format": {"type": "json_object"}})).is_ok());
    assert_eq!(
        refused(chat(json!({"response_format": {"type": "xml"}}))),
        (Some("response_format".into()), 400)
    );
    assert_eq!(
        refused(completion(json!({"suffix": "end"}))),
        (Some("suffix".into()), 422)
    );
    assert_eq!(
        refused(completion(json!({"best_of": 3}))),
        (Some("best_of".into()), 422)
    );
    assert!(completion(json!({"best_of": 2, "n": 2})).is_ok());
}

#[test]
fn logprobs_stop_and_token_limits() {
    let options = chat(json!({
        "logprobs": true, "top_logprobs": 3, "stop": "\n", "max_tokens": 9, "max_completion_tokens": 4,
        "stream": true, "stream_options": {"include_usage": true}
    }))
    .expect("valid");
    assert_eq!(options.logprobs, Some(3));
    assert_eq!(options.request_parameters(4, 0).top_n_tokens, 3);
    assert_eq!(options.stop_sequences, ["\n"]);
    assert_eq!(options.max_tokens, Some(4), "max_completion_tokens wins");
    assert!(options.stream && options.include_usage);
    assert_eq!(
        chat(json!({"logprobs": true})).expect("valid").logprobs,
        Some(0)
    );
    assert_eq!(
        chat(json!({"logprobs": false, "top_logprobs": 0}))
            .expect("valid")
            .logprobs,
        None
    );

    let legacy = completion(json!({"logprobs": 2, "echo": true})).expect("valid");
    assert_eq!(legacy.logprobs, Some(2));
    assert!(
        legacy.prompt_logprobs,
        "echo + logprobs asks the shard for prompt logprobs"
    );
    assert_eq!(
        legacy.max_tokens,
        Some(16),
        "OpenAI's default for completions"
    );
    assert!(
        !completion(json!({"echo": true}))
            .expect("valid")
            .prompt_logprobs
    );
}
