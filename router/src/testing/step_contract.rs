//! Runs the step-contract conformance scenarios (`proto/conformance/step_contract.json`)
//! against a `ShardClient`. The same file is run against the real shard by
//! `tests/test_step_contract.py`, so the router's fake shard and the real one cannot drift.

use std::collections::HashMap;

use serde::Deserialize;

use crate::proto;
use crate::shard_client::ShardClient;

const SCENARIOS_JSON: &str = include_str!("../../../proto/conformance/step_contract.json");

#[derive(Debug, Deserialize)]
pub struct Conformance {
    pub block_size: usize,
    pub num_blocks: usize,
    scenarios: Vec<Scenario>,
}

#[derive(Debug, Deserialize)]
struct Scenario {
    name: String,
    steps: Vec<ScenarioStep>,
    #[serde(default)]
    same_tokens: Vec<[u64; 2]>,
}

#[derive(Debug, Deserialize)]
struct ScenarioStep {
    #[serde(default)]
    new: Vec<NewSpec>,
    #[serde(default)]
    running: Vec<RunningSpec>,
    #[serde(default)]
    release: Vec<u64>,
    expect: HashMap<String, Expectation>,
}

#[derive(Debug, Deserialize)]
struct NewSpec {
    id: u64,
    prompt: Vec<u32>,
    #[serde(default)]
    append_generated_of: Option<u64>,
    #[serde(default)]
    cached: u32,
    #[serde(default)]
    scheduled: Option<u32>,
    blocks: Vec<u32>,
    max_new_tokens: u32,
    #[serde(default)]
    prompt_logprobs: bool,
    #[serde(default)]
    no_parameters: bool,
}

#[derive(Debug, Deserialize)]
struct RunningSpec {
    id: u64,
    #[serde(default)]
    sampled: bool,
    /// The shard appends what it generated for the request in its previous step.
    #[serde(default)]
    generated: bool,
    #[serde(default)]
    new_blocks: Vec<u32>,
    scheduled: u32,
}

#[derive(Debug, Deserialize)]
struct Expectation {
    tokens: Option<usize>,
    finish: Option<String>,
    #[serde(default)]
    error: bool,
    prompt_logprobs: Option<usize>,
}

pub fn conformance() -> Conformance {
    serde_json::from_str(SCENARIOS_JSON).expect("step_contract.json parses")
}

impl Conformance {
    /// Runs every scenario on a fresh shard from `make_client`; returns the problems found.
    pub async fn run<C: ShardClient>(&self, make_client: impl Fn() -> C) -> Vec<String> {
        let mut problems = Vec::new();
        for scenario in &self.scenarios {
            let client = make_client();
            for problem in run_scenario(&client, scenario).await {
                problems.push(format!("{}: {problem}", scenario.name));
            }
        }
        problems
    }
}

async fn run_scenario<C: ShardClient>(client: &C, scenario: &Scenario) -> Vec<String> {
    let mut generated: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut problems = Vec::new();
    for (index, spec) in scenario.steps.iter().enumerate() {
        let step = build_step(spec, &generated);
        let response = match client.prefill(step).await {
            Ok(response) => response,
            Err(error) => {
                problems.push(format!("step {index}: the call failed: {error}"));
                return problems;
            }
        };
        let by_id: HashMap<u64, proto::Generation> = response
            .generations
            .into_iter()
            .map(|generation| (generation.request_id, generation))
            .collect();
        for (id, expectation) in &spec.expect {
            let id: u64 = id.parse().expect("request ids are numbers");
            match by_id.get(&id) {
                Some(generation) => {
                    let tokens = generated.entry(id).or_default();
                    tokens.extend(generation.tokens.iter().map(|token| token.token_id));
                    if let Some(problem) = check(expectation, generation) {
                        problems.push(format!("step {index}, request {id}: {problem}"));
                    }
                }
                None => problems.push(format!("step {index}: no answer for request {id}")),
            }
        }
    }
    for [a, b] in &scenario.same_tokens {
        if generated.get(a) != generated.get(b) {
            problems.push(format!(
                "requests {a} and {b} differ: {:?} vs {:?}",
                generated.get(a),
                generated.get(b)
            ));
        }
    }
    problems
}

fn build_step(spec: &ScenarioStep, generated: &HashMap<u64, Vec<u32>>) -> proto::Step {
    let new_requests = spec
        .new
        .iter()
        .map(|new| {
            let mut token_ids = new.prompt.clone();
            if let Some(source) = new.append_generated_of {
                token_ids.extend(generated.get(&source).into_iter().flatten());
            }
            let num_tokens = token_ids.len() as u32;
            proto::NewRequest {
                request_id: new.id,
                num_prompt_tokens: new.prompt.len() as u32,
                num_cached_tokens: new.cached,
                num_scheduled_tokens: new.scheduled.unwrap_or(num_tokens - new.cached),
                token_ids,
                block_ids: new.blocks.clone(),
                parameters: (!new.no_parameters).then(|| parameters(new)),
            }
        })
        .collect();
    let running_requests = spec
        .running
        .iter()
        .map(|running| proto::RunningRequest {
            request_id: running.id,
            new_token_ids: if running.sampled {
                generated
                    .get(&running.id)
                    .and_then(|tokens| tokens.last())
                    .copied()
                    .into_iter()
                    .collect()
            } else {
                Vec::new()
            },
            new_block_ids: running.new_blocks.clone(),
            num_scheduled_tokens: running.scheduled,
            num_lookahead_tokens: 0,
            append_generated_tokens: running.generated,
        })
        .collect();
    proto::Step {
        new_requests,
        running_requests,
        release_request_ids: spec.release.clone(),
        ..Default::default()
    }
}

fn parameters(new: &NewSpec) -> proto::RequestParameters {
    proto::RequestParameters {
        stopping: Some(proto::StoppingParameters {
            max_new_tokens: new.max_new_tokens,
            ignore_eos: true,
        }),
        prompt_logprobs: new.prompt_logprobs,
        ..Default::default()
    }
}

fn check(expectation: &Expectation, generation: &proto::Generation) -> Option<String> {
    let is_rejected = !generation.error.is_empty();
    if expectation.error != is_rejected {
        return Some(format!(
            "error expected: {}, got {:?}",
            expectation.error, generation.error
        ));
    }
    if let Some(tokens) = expectation.tokens {
        if generation.tokens.len() != tokens {
            return Some(format!(
                "{tokens} tokens expected, got {}",
                generation.tokens.len()
            ));
        }
    }
    if let Some(finish) = &expectation.finish {
        let expected = match finish.as_str() {
            "none" => proto::FinishReason::Unspecified,
            "length" => proto::FinishReason::Length,
            "eos" => proto::FinishReason::Eos,
            other => return Some(format!("unknown finish {other}")),
        };
        if generation.finish_reason != expected as i32 {
            return Some(format!(
                "finish {finish} expected, got {}",
                generation.finish_reason
            ));
        }
    }
    if let Some(count) = expectation.prompt_logprobs {
        if generation.prompt_logprobs.len() != count {
            return Some(format!(
                "{count} prompt logprobs expected, got {}",
                generation.prompt_logprobs.len()
            ));
        }
    }
    None
}
