//! The fake shard's per-request state machine and its checks of what the router sends.
//!
//! Like the real shard it keeps a copy of each request's tokens and block table as the router
//! sent them (new requests whole, running ones as diffs) and appends a token itself only when
//! a step says so (`append_generated_tokens`: the tokens of the request's previous step). It
//! also records which token each KV slot holds, so a prefix-cache hit that points at blocks
//! holding other tokens, or a write into a block another live request holds, is caught.

use std::collections::HashMap;

use super::{fake_prompt_logprob, FakeShardConfig, StepSummary};
use crate::proto;

#[derive(Debug)]
pub(super) struct FakeRequest {
    pub(super) token_ids: Vec<u32>,
    pub(super) num_prompt_tokens: usize,
    pub(super) num_computed_tokens: usize,
    pub(super) max_new_tokens: usize,
    pub(super) ignore_eos: bool,
    pub(super) top_n_tokens: usize,
    pub(super) wants_prompt_logprobs: bool,
    pub(super) block_table: Vec<u32>,
    /// What its most recent step generated (for `append_generated_tokens`); emptied when used.
    pub(super) last_generated: Vec<u32>,
}

#[derive(Debug, Default)]
pub(super) struct FakeState {
    pub(super) requests: HashMap<u64, FakeRequest>,
    /// Requests the fake finished (EOS / length) or rejected, and forgot.
    pub(super) forgotten_ids: std::collections::HashSet<u64>,
    /// block id -> the token written into each of its slots.
    pub(super) block_slots: HashMap<u32, Vec<Option<u32>>>,
    pub(super) violations: Vec<String>,
    pub(super) released_ids: Vec<u64>,
    pub(super) num_failures_to_inject: usize,
    /// A simulated crash: at this step call the process "dies" (state lost, Transport
    /// errors) and stays unreachable for the duration.
    pub(super) crash_plan: Option<(usize, std::time::Duration)>,
    /// Unreachable until then (after a simulated crash).
    pub(super) down_until: Option<std::time::Instant>,
    pub(super) num_warmups: usize,
    pub(super) num_clears: usize,
    pub(super) steps: Vec<StepSummary>,
}

pub(super) fn run_new(
    state: &mut FakeState,
    config: &FakeShardConfig,
    new: proto::NewRequest,
) -> proto::Generation {
    let request_id = new.request_id;
    if state.requests.contains_key(&request_id) {
        return reject(state, request_id, "new request already live".to_string());
    }
    let request = match start_request(config, &new) {
        Ok(request) => request,
        Err(problem) => return reject(state, request_id, problem),
    };
    let num_cached_tokens = new.num_cached_tokens as usize;
    if let Some(problem) = check_cached_prefix(state, config, &request, num_cached_tokens) {
        return reject(state, request_id, problem);
    }
    state.requests.insert(request_id, request);
    compute(
        state,
        config,
        request_id,
        new.num_scheduled_tokens as usize,
        0,
    )
}

fn start_request(config: &FakeShardConfig, new: &proto::NewRequest) -> Result<FakeRequest, String> {
    let Some(parameters) = new.parameters.as_ref() else {
        return Err("new request without parameters".to_string());
    };
    if config.poison_token_id.is_some() && new.token_ids.first() == config.poison_token_id.as_ref()
    {
        return Err("poisoned prompt".to_string());
    }
    if !(new.num_cached_tokens as usize).is_multiple_of(config.block_size) {
        return Err(format!(
            "{} cached tokens are not whole blocks",
            new.num_cached_tokens
        ));
    }
    if new.num_prompt_tokens as usize > new.token_ids.len() {
        return Err("more prompt tokens than tokens".to_string());
    }
    check_token_ids(config, &new.token_ids)?;
    let stopping = parameters.stopping.unwrap_or_default();
    Ok(FakeRequest {
        token_ids: new.token_ids.clone(),
        num_prompt_tokens: new.num_prompt_tokens as usize,
        num_computed_tokens: new.num_cached_tokens as usize,
        max_new_tokens: stopping.max_new_tokens as usize,
        ignore_eos: stopping.ignore_eos,
        top_n_tokens: parameters.top_n_tokens as usize,
        wants_prompt_logprobs: parameters.prompt_logprobs,
        block_table: new.block_ids.clone(),
        last_generated: Vec::new(),
    })
}

fn check_token_ids(config: &FakeShardConfig, token_ids: &[u32]) -> Result<(), String> {
    match token_ids
        .iter()
        .find(|&&token_id| token_id >= config.vocab_size)
    {
        Some(token_id) => Err(format!("token id {token_id} outside the vocabulary")),
        None => Ok(()),
    }
}

/// The cached tokens must be in the blocks the request was given.
fn check_cached_prefix(
    state: &FakeState,
    config: &FakeShardConfig,
    request: &FakeRequest,
    num_cached_tokens: usize,
) -> Option<String> {
    (0..num_cached_tokens).find_map(|position| {
        let block_id = *request.block_table.get(position / config.block_size)?;
        let slot = state
            .block_slots
            .get(&block_id)
            .and_then(|slots| slots[position % config.block_size]);
        (slot != Some(request.token_ids[position])).then(|| {
            format!("cached position {position} in block {block_id} holds {slot:?}, not the request's token")
        })
    })
}

pub(super) fn run_running(
    state: &mut FakeState,
    config: &FakeShardConfig,
    running: proto::RunningRequest,
) -> proto::Generation {
    let request_id = running.request_id;
    if let Err(problem) = check_token_ids(config, &running.new_token_ids) {
        return reject(state, request_id, problem);
    }
    let Some(request) = state.requests.get_mut(&request_id) else {
        let problem = "running request is unknown".to_string();
        if running.append_generated_tokens && state.forgotten_ids.contains(&request_id) {
            // Planned before the router saw the answer that finished or rejected it.
            return proto::Generation {
                request_id,
                error: problem,
                ..Default::default()
            };
        }
        return reject(state, request_id, problem);
    };
    if running.append_generated_tokens {
        if !running.new_token_ids.is_empty() {
            return reject(
                state,
                request_id,
                "generated tokens to append and new tokens in one step".to_string(),
            );
        }
        if request.last_generated.is_empty() {
            return reject(
                state,
                request_id,
                "no generated tokens to append: its previous step sampled nothing".to_string(),
            );
        }
        let generated = std::mem::take(&mut request.last_generated);
        request.token_ids.extend(generated);
    } else if !running.new_token_ids.is_empty() {
        request.last_generated.clear();
    }
    request.token_ids.extend_from_slice(&running.new_token_ids);
    request
        .block_table
        .extend_from_slice(&running.new_block_ids);
    compute(
        state,
        config,
        request_id,
        running.num_scheduled_tokens as usize,
        running.num_lookahead_tokens as usize,
    )
}

/// Computes the next `num_scheduled_tokens` of a live request (writing their KV slots) and
/// samples when it reaches the end of its tokens; with `num_lookahead` slots it also
/// "verifies proposals" (see `speculate`).
fn compute(
    state: &mut FakeState,
    config: &FakeShardConfig,
    request_id: u64,
    num_scheduled_tokens: usize,
    num_lookahead: usize,
) -> proto::Generation {
    let Some(request) = state.requests.get(&request_id) else {
        return reject(state, request_id, "request vanished".to_string());
    };
    let start = request.num_computed_tokens;
    let end = start + num_scheduled_tokens;
    let problem = if num_scheduled_tokens == 0 {
        Some("nothing scheduled".to_string())
    } else if end > request.token_ids.len() {
        Some(format!(
            "{end} tokens scheduled but only {} known",
            request.token_ids.len()
        ))
    } else if request.block_table.len() * config.block_size < end + num_lookahead {
        Some(format!(
            "{} blocks cannot hold {end} tokens and {num_lookahead} lookahead slots",
            request.block_table.len()
        ))
    } else if num_lookahead > 0 && end != request.token_ids.len() {
        Some("lookahead slots for a step that does not reach the end".to_string())
    } else {
        None
    };
    if let Some(problem) = problem {
        return reject(state, request_id, problem);
    }
    let writes: Vec<(u32, usize, u32)> = (start..end)
        .map(|position| {
            let block_id = request.block_table[position / config.block_size];
            (
                block_id,
                position % config.block_size,
                request.token_ids[position],
            )
        })
        .collect();
    let prompt_logprobs = if request.wants_prompt_logprobs {
        (start..end)
            .map(|position| fake_prompt_logprob(position, request.token_ids[position]))
            .collect()
    } else {
        Vec::new()
    };
    for (block_id, slot, token_id) in writes {
        write_slot(state, config, request_id, block_id, slot, token_id);
    }
    let mut generation = proto::Generation {
        request_id,
        prompt_logprobs,
        ..Default::default()
    };
    let request = state.requests.get_mut(&request_id).expect("checked above");
    request.num_computed_tokens = end;
    if end == request.token_ids.len() {
        let num_accepted = speculate(state, config, request_id, num_lookahead);
        sample(state, config, request_id, num_accepted, &mut generation);
        generation.num_proposed_tokens = num_lookahead as u32;
    }
    generation
}

/// Speculation as the fake does it: of `num_lookahead` proposals (the fake model's own next
/// tokens), a pseudo-random number is "accepted" and their K/V written after the known
/// tokens; the rejected slots get garbage, which the router must never treat as computed.
fn speculate(
    state: &mut FakeState,
    config: &FakeShardConfig,
    request_id: u64,
    num_lookahead: usize,
) -> usize {
    if num_lookahead == 0 {
        return 0;
    }
    let request = &state.requests[&request_id];
    let end = request.token_ids.len();
    let num_accepted = (request_id as usize * 7 + end * 13) % (num_lookahead + 1);
    let last = request.token_ids.last().copied().unwrap_or(0);
    let writes: Vec<(u32, usize, u32)> = (0..num_lookahead)
        .map(|offset| {
            let position = end + offset;
            let block_id = request.block_table[position / config.block_size];
            let token_id = if offset < num_accepted {
                (last + 1 + offset as u32) % config.vocab_size
            } else {
                GARBAGE_TOKEN_ID
            };
            (block_id, position % config.block_size, token_id)
        })
        .collect();
    for (block_id, slot, token_id) in writes {
        write_slot(state, config, request_id, block_id, slot, token_id);
    }
    num_accepted
}

/// What a rejected proposal's KV slot holds: no real token.
const GARBAGE_TOKEN_ID: u32 = u32::MAX;

fn write_slot(
    state: &mut FakeState,
    config: &FakeShardConfig,
    request_id: u64,
    block_id: u32,
    slot: usize,
    token_id: u32,
) {
    let shared_with = state
        .requests
        .iter()
        .find(|(&other, request)| other != request_id && request.block_table.contains(&block_id));
    if let Some((&other, _)) = shared_with {
        state.violations.push(format!(
            "request {request_id} wrote into block {block_id}, which request {other} holds"
        ));
    }
    let slots = state
        .block_slots
        .entry(block_id)
        .or_insert_with(|| vec![None; config.block_size]);
    slots[slot] = Some(token_id);
}

/// Answers the next tokens (the router appends them): the `num_accepted` proposals, then one
/// more, each `last + 1`; finishes the request when one of them stops it.
fn sample(
    state: &mut FakeState,
    config: &FakeShardConfig,
    request_id: u64,
    num_accepted: usize,
    generation: &mut proto::Generation,
) {
    let Some(request) = state.requests.get_mut(&request_id) else {
        return;
    };
    request.num_computed_tokens += num_accepted;
    let vocab_size = config.vocab_size;
    let mut last = request.token_ids.last().copied().unwrap_or(0);
    let mut finish = proto::FinishReason::Unspecified;
    for index in 0..=num_accepted {
        let token_id = (last + 1) % vocab_size;
        last = token_id;
        let num_generated_tokens = request.token_ids.len() - request.num_prompt_tokens + 1 + index;
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
        finish = if !request.ignore_eos && config.eos_token_ids.contains(&token_id) {
            proto::FinishReason::Eos
        } else if num_generated_tokens >= request.max_new_tokens {
            proto::FinishReason::Length
        } else {
            proto::FinishReason::Unspecified
        };
        if finish != proto::FinishReason::Unspecified {
            break;
        }
    }
    generation.finish_reason = finish as i32;
    request.last_generated = generation
        .tokens
        .iter()
        .map(|token| token.token_id)
        .collect();
    if finish != proto::FinishReason::Unspecified {
        state.requests.remove(&request_id);
        state.forgotten_ids.insert(request_id);
    }
}

/// Records `problem`, forgets the request and answers a per-request error.
pub(super) fn reject(state: &mut FakeState, request_id: u64, problem: String) -> proto::Generation {
    state.requests.remove(&request_id);
    state.forgotten_ids.insert(request_id);
    state
        .violations
        .push(format!("request {request_id}: {problem}"));
    proto::Generation {
        request_id,
        error: problem,
        ..Default::default()
    }
}

/// A block in two live requests' tables must be a full block both have computed (a shared
/// prefix block), at the same position; no table holds a block twice.
pub(super) fn check_block_ownership(state: &mut FakeState, block_size: usize) {
    let mut owners: HashMap<u32, (u64, usize)> = HashMap::new();
    let mut problems = Vec::new();
    for (&request_id, request) in &state.requests {
        let num_full_blocks = request.num_computed_tokens / block_size;
        for (index, &block_id) in request.block_table.iter().enumerate() {
            let Some((other, other_index)) = owners.insert(block_id, (request_id, index)) else {
                continue;
            };
            let other_full = state.requests[&other].num_computed_tokens / block_size;
            if other == request_id
                || other_index != index
                || index >= num_full_blocks
                || index >= other_full
            {
                problems.push(format!(
                    "block {block_id} used by requests {other} and {request_id} but not as a computed shared prefix"
                ));
            }
        }
    }
    state.violations.extend(problems);
}
