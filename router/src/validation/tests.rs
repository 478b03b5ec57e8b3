use std::sync::Arc;

use super::*;
use crate::api::generate::GenerateParameters;
use crate::error::ApiError;
use crate::testing::test_config;
use crate::testing::tiny_tokenizer::byte_level_tokenizer;

fn validator() -> Validator {
    Validator::new(Arc::new(byte_level_tokenizer()), test_config().limits)
}

fn request(inputs: &str, parameters: GenerateParameters) -> GenerateRequest {
    GenerateRequest {
        inputs: inputs.into(),
        parameters,
    }
}

async fn validate(
    inputs: &str,
    parameters: GenerateParameters,
    delivery: Delivery,
) -> Result<ValidRequest, ValidationError> {
    validator()
        .validate(request(inputs, parameters), delivery, Instant::now())
        .await
}

/// The message a client sees (as `error.rs` renders it).
async fn message(inputs: &str, parameters: GenerateParameters, delivery: Delivery) -> String {
    let error = validate(inputs, parameters, delivery)
        .await
        .expect_err("must be refused");
    ApiError::from(error).body().error
}

#[tokio::test]
async fn length_errors_state_the_limit_and_the_numbers() {
    // 19 characters without merges + the post-processor's <s> = 20 tokens.
    let inputs = "x".repeat(19);
    let parameters = GenerateParameters {
        max_new_tokens: Some(50),
        ..Default::default()
    };
    assert_eq!(
        message(&inputs, parameters, Delivery::Complete).await,
        "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 64. \
         Given: 20 `inputs` tokens and 50 `max_new_tokens`"
    );
    assert_eq!(
        message(
            &"x".repeat(39),
            GenerateParameters::default(),
            Delivery::Complete
        )
        .await,
        "Input validation error: `inputs` must have less than 32 tokens. Given: 40"
    );
    assert_eq!(
        message("", GenerateParameters::default(), Delivery::Complete).await,
        "Input validation error: `inputs` cannot be empty"
    );
}

#[tokio::test]
async fn max_new_tokens_defaults_to_the_room_left() {
    let valid = validate(
        &"x".repeat(19),
        GenerateParameters::default(),
        Delivery::Complete,
    )
    .await
    .expect("valid");
    assert_eq!(valid.input_ids.len(), 20);
    assert_eq!(
        valid.parameters.stopping.expect("stopping").max_new_tokens,
        44
    );
}

#[tokio::test]
async fn truncate_keeps_the_last_tokens() {
    let inputs = format!("{}Hello", "x".repeat(50));
    let parameters = GenerateParameters {
        truncate: Some(4),
        ..Default::default()
    };
    let valid = validate(&inputs, parameters, Delivery::Complete)
        .await
        .expect("valid");
    assert_eq!(valid.input_ids.len(), 4);
    let tokenizer = byte_level_tokenizer();
    assert_eq!(
        tokenizer.decode(&valid.input_ids).expect("decode"),
        "xxxHello"
    );
    let parameters = GenerateParameters {
        truncate: Some(33),
        ..Default::default()
    };
    assert_eq!(
        message("hi", parameters, Delivery::Complete).await,
        "Input validation error: `truncate` must be strictly positive and less than 32. Given: 33"
    );
}

#[tokio::test]
async fn sampling_follows_tgi_rules() {
    let greedy = validate("hi", GenerateParameters::default(), Delivery::Complete)
        .await
        .expect("ok");
    let sampling = greedy.parameters.sampling.expect("sampling");
    assert!(!sampling.do_sample);
    assert_eq!(greedy.seed, None, "greedy requests report no seed");

    // Setting a warper turns sampling on, and the server draws and reports a seed.
    let parameters = GenerateParameters {
        top_k: Some(5),
        temperature: Some(0.7),
        ..Default::default()
    };
    let sampled = validate("hi", parameters, Delivery::Complete)
        .await
        .expect("ok");
    let sampling = sampled.parameters.sampling.clone().expect("sampling");
    assert!(sampling.do_sample && sampling.has_seed);
    assert_eq!((sampling.top_k, sampling.temperature), (5, 0.7));
    assert_eq!(sampled.seed, Some(sampling.seed));

    let parameters = GenerateParameters {
        do_sample: true,
        seed: Some(42),
        ..Default::default()
    };
    let seeded = validate("hi", parameters, Delivery::Complete)
        .await
        .expect("ok");
    assert_eq!(seeded.seed, Some(42));
    let sampling = seeded.parameters.sampling.expect("sampling");
    assert_eq!(sampling.top_p, 1.0);
    assert!(!sampling.watermark);
}

#[tokio::test]
async fn watermark_reaches_the_shard_parameters() {
    let parameters = GenerateParameters {
        watermark: true,
        do_sample: true,
        ..Default::default()
    };
    let marked = validate("hi", parameters, Delivery::Stream)
        .await
        .expect("watermark is served");
    assert!(marked.parameters.sampling.expect("sampling").watermark);
}

#[tokio::test]
async fn parameter_ranges_are_checked_with_tgi_messages() {
    let cases: Vec<(GenerateParameters, &str)> = vec![
        (
            GenerateParameters {
                temperature: Some(0.0),
                ..Default::default()
            },
            "`temperature` must be strictly positive",
        ),
        (
            GenerateParameters {
                repetition_penalty: Some(-1.0),
                ..Default::default()
            },
            "`repetition_penalty` must be strictly positive",
        ),
        (
            GenerateParameters {
                frequency_penalty: Some(2.5),
                ..Default::default()
            },
            "`frequency_penalty` must be >= -2.0 and <= 2.0",
        ),
        (
            GenerateParameters {
                top_p: Some(1.0),
                ..Default::default()
            },
            "`top_p` must be > 0.0 and < 1.0",
        ),
        (
            GenerateParameters {
                typical_p: Some(0.0),
                ..Default::default()
            },
            "`typical_p` must be > 0.0 and < 1.0",
        ),
        (
            GenerateParameters {
                top_k: Some(0),
                ..Default::default()
            },
            "`top_k` must be strictly positive",
        ),
        (
            GenerateParameters {
                max_new_tokens: Some(0),
                ..Default::default()
            },
            "`max_new_tokens` must be strictly positive",
        ),
        (
            GenerateParameters {
                top_n_tokens: Some(4),
                ..Default::default()
            },
            "`top_n_tokens` must be >= 0 and <= 3. Given: 4",
        ),
        (
            GenerateParameters {
                stop: vec!["a".into(), "b".into(), "c".into()],
                ..Default::default()
            },
            "`stop` supports up to 2 stop sequences. Given: 3",
        ),
        (
            GenerateParameters {
                stop: vec![String::new()],
                ..Default::default()
            },
            "`stop` sequences must not be empty strings",
        ),
        (
            GenerateParameters {
                adapter_id: Some("my-adapter".into()),
                ..Default::default()
            },
            "adapter `my-adapter` is not loaded; loaded adapters: none (start with \
             --lora-adapters to serve some); the base model is `tiny`",
        ),
    ];
    for (parameters, expected) in cases {
        let got = message("hi", parameters, Delivery::Complete).await;
        assert_eq!(got, format!("Input validation error: {expected}"));
    }
}

#[tokio::test]
async fn best_of_rules() {
    let sampled = |best_of| GenerateParameters {
        best_of: Some(best_of),
        do_sample: true,
        ..Default::default()
    };
    let cases = vec![
        (
            sampled(4),
            Delivery::Complete,
            ValidationError::BestOf {
                max_best_of: 3,
                given: 4,
            },
        ),
        (
            sampled(0),
            Delivery::Complete,
            ValidationError::BestOf {
                max_best_of: 3,
                given: 0,
            },
        ),
        (sampled(2), Delivery::Stream, ValidationError::BestOfStream),
        (
            GenerateParameters {
                best_of: Some(2),
                ..Default::default()
            },
            Delivery::Complete,
            ValidationError::BestOfSampling,
        ),
        (
            GenerateParameters {
                seed: Some(1),
                ..sampled(2)
            },
            Delivery::Complete,
            ValidationError::BestOfSeed,
        ),
    ];
    for (parameters, delivery, expected) in cases {
        assert_eq!(
            validate("hi", parameters, delivery)
                .await
                .expect_err("refused"),
            expected
        );
    }
    let valid = validate("hi", sampled(3), Delivery::Complete)
        .await
        .expect("valid");
    let seeds: Vec<u64> = (0..3)
        .map(|index| {
            valid
                .generation_request(index)
                .parameters
                .sampling
                .expect("sampling")
                .seed
        })
        .collect();
    assert!(
        seeds[0] != seeds[1] && seeds[1] != seeds[2],
        "candidates need distinct seeds: {seeds:?}"
    );
    assert_eq!(valid.candidate_seed(2), Some(seeds[2]));
}

#[tokio::test]
async fn prompt_details_need_a_complete_answer() {
    let parameters = GenerateParameters {
        decoder_input_details: true,
        ..Default::default()
    };
    let error = validate("hi", parameters.clone(), Delivery::Stream)
        .await
        .expect_err("refused");
    assert_eq!(error, ValidationError::PrefillDetailsStream);
    let valid = validate("hi", parameters, Delivery::Complete)
        .await
        .expect("valid");
    assert!(valid.parameters.prompt_logprobs);
}

struct RefuseRegex;

impl crate::validation::grammar::GrammarCompiler for RefuseRegex {
    fn compile(&self, grammar: proto::Grammar) -> crate::validation::grammar::CompileFuture<'_> {
        Box::pin(async move {
            let regex = grammar.kind == proto::GrammarKind::Regex as i32;
            let error = if regex {
                "invalid regex: unclosed group".into()
            } else {
                String::new()
            };
            Ok(proto::CompileGrammarResponse {
                error,
                ..Default::default()
            })
        })
    }
}

#[tokio::test]
async fn grammars_reach_the_shard_and_refusals_are_422_messages() {
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let validator = Validator::with_grammars(
        Arc::new(byte_level_tokenizer()),
        test_config().limits,
        Arc::new(RefuseRegex),
        Arc::clone(&metrics),
    );
    let request = |grammar: serde_json::Value| GenerateRequest {
        inputs: "hi".into(),
        parameters: GenerateParameters {
            grammar: Some(serde_json::from_value(grammar).expect("valid")),
            ..Default::default()
        },
    };
    let schema = serde_json::json!({"type": "object"});
    let valid = validator
        .validate(
            request(serde_json::json!({"type": "json", "value": schema})),
            Delivery::Complete,
            Instant::now(),
        )
        .await
        .expect("valid");
    let grammar = valid
        .parameters
        .sampling
        .expect("valid")
        .grammar
        .expect("valid");
    assert_eq!(grammar.kind, proto::GrammarKind::JsonSchema as i32);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&grammar.value).expect("valid"),
        schema
    );
    let refused = validator
        .validate(
            request(serde_json::json!({"type": "regex", "value": "(("})),
            Delivery::Complete,
            Instant::now(),
        )
        .await
        .expect_err("refused");
    assert_eq!(
        refused.to_string(),
        "grammar: invalid regex: unclosed group"
    );
    let text = metrics.render(&Default::default());
    assert!(text.contains("ferrite_grammar_compiled_total 1"), "{text}");
    assert!(text.contains("ferrite_grammar_refused_total 1"), "{text}");
}
