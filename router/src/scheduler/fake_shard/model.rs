//! The fake shard's per-request state machine and its checks of what the router sends.

use std::collections::HashMap;

use super::{fake_prompt_logprob, FakeShardConfig, StepSummary};
use crate::proto;

#[derive(Debug)]
pub(super) struct FakeRequest {
    pub(super) token_ids: Vec<u32>,
    pub(super) num_computed_tokens: usize,
    pub(super) num_generated_tokens: usize,
    pub(super) max_new_tokens: usize,
    pub(super) ignore_eos: bool,
    pub(super) top_n_tokens: usize,
    pub(super) wants_prompt_logprobs: bool,
    pub(super) block_table: Vec<u32>,
    pub(super) is_decoding: bool,
}

#[derive(Debug, Default)]
pub(super) struct FakeState {
    pub(super) requests: HashMap<u64, FakeRequest>,
    pub(super) violations: Vec<String>,
    pub(super) released_ids: Vec<u64>,
    pub(super) num_failures_to_inject: usize,
    pub(super) num_clears: usize,
    pub(super) steps: Vec<StepSummary>,
}

pub(super) fn run_chunk(
    state: &mut FakeState,
    config: &FakeShardConfig,
    chunk: proto::PrefillChunk,
) -> proto::Generation {
    let request_id = chunk.request_id;
    if !state.requests.contains_key(&request_id) {
        if let Err(problem) = start_request(state, config, &chunk) {
            return reject(state, request_id, problem);
        }
    }
    let Some(request) = state.requests.get_mut(&request_id) else {
        return reject(state, request_id, "request vanished".to_string());
    };
    let num_tokens_after = request.num_computed_tokens + chunk.input_ids.len();
    let problem = if request.is_decoding {
        Some("prompt chunk for a decoding request".to_string())
    } else if chunk.num_cached_tokens as usize != request.num_computed_tokens {
        Some(format!(
            "chunk starts at {} but {} tokens are cached",
            chunk.num_cached_tokens, request.num_computed_tokens
        ))
    } else if chunk.input_ids.is_empty() {
        Some("empty chunk".to_string())
    } else {
        check_block_table(
            request,
            &chunk.block_table,
            num_tokens_after,
            config.block_size,
        )
    };
    if let Some(problem) = problem {
        return reject(state, request_id, problem);
    }
    let start = request.token_ids.len();
    request.token_ids.extend_from_slice(&chunk.input_ids);
    request.num_computed_tokens = num_tokens_after;
    request.block_table = chunk.block_table;
    let prompt_logprobs = if request.wants_prompt_logprobs {
        (start..request.token_ids.len())
            .map(|position| fake_prompt_logprob(position, request.token_ids[position]))
            .collect()
    } else {
        Vec::new()
    };
    let mut generation = proto::Generation {
        request_id,
        prompt_logprobs,
        ..Default::default()
    };
    if chunk.is_last_chunk {
        request.is_decoding = true;
        sample(state, config, request_id, &mut generation);
    }
    generation
}

fn start_request(
    state: &mut FakeState,
    config: &FakeShardConfig,
    chunk: &proto::PrefillChunk,
) -> Result<(), String> {
    let Some(parameters) = chunk.parameters.as_ref() else {
        return Err("first chunk without parameters".to_string());
    };
    if chunk.num_cached_tokens != 0 {
        return Err(format!("first chunk starts at {}", chunk.num_cached_tokens));
    }
    if config.poison_token_id.is_some()
        && chunk.input_ids.first() == config.poison_token_id.as_ref()
    {
        return Err("poisoned prompt".to_string());
    }
    let stopping = parameters.stopping.unwrap_or_default();
    state.requests.insert(
        chunk.request_id,
        FakeRequest {
            token_ids: Vec::new(),
            num_computed_tokens: 0,
            num_generated_tokens: parameters.resumed_generated_tokens as usize,
            max_new_tokens: stopping.max_new_tokens as usize,
            ignore_eos: stopping.ignore_eos,
            top_n_tokens: parameters.top_n_tokens as usize,
            wants_prompt_logprobs: parameters.prompt_logprobs,
            block_table: Vec::new(),
            is_decoding: false,
        },
    );
    Ok(())
}

pub(super) fn run_decode(
    state: &mut FakeState,
    config: &FakeShardConfig,
    decode: proto::DecodeEntry,
) -> proto::Generation {
    let request_id = decode.request_id;
    let Some(request) = state.requests.get_mut(&request_id) else {
        return reject(
            state,
            request_id,
            "decode of an unknown request".to_string(),
        );
    };
    let num_tokens = request.token_ids.len();
    let problem = if !request.is_decoding {
        Some("decode before the prompt is done".to_string())
    } else if request.num_computed_tokens + 1 != num_tokens {
        Some(format!(
            "decode with {} of {num_tokens} tokens cached",
            request.num_computed_tokens
        ))
    } else {
        check_block_table(request, &decode.block_table, num_tokens, config.block_size)
    };
    if let Some(problem) = problem {
        return reject(state, request_id, problem);
    }
    request.num_computed_tokens = num_tokens;
    request.block_table = decode.block_table;
    let mut generation = proto::Generation {
        request_id,
        ..Default::default()
    };
    sample(state, config, request_id, &mut generation);
    generation
}

/// Appends the next token to `generation` and finishes the request when it should stop.
fn sample(
    state: &mut FakeState,
    config: &FakeShardConfig,
    request_id: u64,
    generation: &mut proto::Generation,
) {
    let Some(request) = state.requests.get_mut(&request_id) else {
        return;
    };
    let vocab_size = config.vocab_size;
    let last = request.token_ids.last().copied().unwrap_or(0);
    let token_id = (last + 1) % vocab_size;
    request.token_ids.push(token_id);
    request.num_generated_tokens += 1;
    let top_tokens = (0..request.top_n_tokens as u32)
        .map(|rank| proto::TopToken {
            token_id: (token_id + rank) % vocab_size,
            logprob: -0.1 - rank as f32,
        })
        .collect();
    generation.tokens.push(proto::GeneratedToken {
        token_id,
        logprob: -0.1,
        top_tokens,
    });
    let finish = if !request.ignore_eos && config.eos_token_ids.contains(&token_id) {
        proto::FinishReason::Eos
    } else if request.num_generated_tokens >= request.max_new_tokens {
        proto::FinishReason::Length
    } else {
        proto::FinishReason::Unspecified
    };
    generation.finish_reason = finish as i32;
    if finish != proto::FinishReason::Unspecified {
        state.requests.remove(&request_id);
    }
}

/// Records `problem`, forgets the request and answers a per-request error.
pub(super) fn reject(state: &mut FakeState, request_id: u64, problem: String) -> proto::Generation {
    state.requests.remove(&request_id);
    state
        .violations
        .push(format!("request {request_id}: {problem}"));
    proto::Generation {
        request_id,
        error: problem,
        ..Default::default()
    }
}

fn check_block_table(
    request: &FakeRequest,
    block_table: &[u32],
    num_tokens: usize,
    block_size: usize,
) -> Option<String> {
    if block_table.len() * block_size < num_tokens {
        return Some(format!(
            "{} blocks cannot hold {num_tokens} tokens",
            block_table.len()
        ));
    }
    if !block_table.starts_with(&request.block_table) {
        return Some("block table changed blocks already holding tokens".to_string());
    }
    None
}

/// No block may be in two live requests' tables (nor twice in one).
pub(super) fn check_block_ownership(state: &mut FakeState) {
    let mut owners: HashMap<u32, u64> = HashMap::new();
    let mut problems = Vec::new();
    for (&request_id, request) in &state.requests {
        for &block_id in &request.block_table {
            if let Some(other) = owners.insert(block_id, request_id) {
                problems.push(format!(
                    "block {block_id} used by requests {other} and {request_id}"
                ));
            }
        }
    }
    state.violations.extend(problems);
}
