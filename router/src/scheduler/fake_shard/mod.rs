//! An in-process `ShardClient` for tests: deterministic tokens and strict checks of what the
//! router sends.
//!
//! Tokens: the next token is (last token of the sequence + 1) % vocab_size, so a request's
//! whole output is known from its prompt alone, whatever batching, chunking, preemption or
//! prefix caching happened (`expected_tokens`). EOS ids end a request unless `ignore_eos`;
//! `max_new_tokens` counts tokens generated before a preemption (the tokens after
//! `num_prompt_tokens`).
//!
//! Checks, recorded as `violations()` (and answered as a per-request error): new requests
//! carry parameters and are not live, running ones are, scheduled tokens are known and
//! covered by the block table, cached tokens are really in the blocks given (the fake records
//! what each KV slot holds), nobody writes into a block another live request holds, and a
//! block is only in two tables as a computed shared prefix. Under asynchronous scheduling a
//! step may name a request the fake finished or rejected in an earlier step (the router had
//! not seen that answer yet): rejected as unknown, like the real shard does, but not a
//! violation.
//!
//! Steps run one at a time in the order the router numbered them (`after_step_id`), however
//! their calls interleave.

mod model;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::proto;
use crate::shard_client::{ShardClient, ShardError, ShardResult};
use model::FakeState;

#[derive(Debug, Clone)]
pub struct FakeShardConfig {
    pub vocab_size: u32,
    pub eos_token_ids: Vec<u32>,
    pub block_size: usize,
    pub num_blocks: usize,
    /// A request whose first prompt token is this id is rejected (Generation.error).
    pub poison_token_id: Option<u32>,
    /// Sleep this long in every step (lets tests act between steps).
    pub step_delay: Duration,
}

impl Default for FakeShardConfig {
    fn default() -> Self {
        Self {
            vocab_size: 1000,
            eos_token_ids: Vec::new(),
            block_size: 4,
            num_blocks: 1024,
            poison_token_id: None,
            step_delay: Duration::ZERO,
        }
    }
}

/// What the router sent in one step (for budget assertions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepSummary {
    pub num_chunks: usize,
    pub num_prefill_tokens: usize,
    pub num_decodes: usize,
    /// Running requests the step told to append their generated tokens (async scheduling).
    pub num_appending: usize,
    /// Tokens in the cache over all live requests after the step.
    pub num_resident_tokens: usize,
    pub num_blocks_in_use: usize,
}

#[derive(Debug, Default)]
pub struct FakeShard {
    config: FakeShardConfig,
    state: Mutex<FakeState>,
    /// Held through a whole step (delay included); tokio's mutex queues in arrival order.
    step_turn: tokio::sync::Mutex<()>,
    /// The highest step_id that took its turn.
    started_step_id: tokio::sync::watch::Sender<u64>,
    /// Step calls received and not answered yet, now and at most.
    steps_in_flight: Mutex<(usize, usize)>,
}

/// The tokens the fake produces for `prompt` with `max_new_tokens` and `eos_token_ids`.
pub fn expected_tokens(
    prompt: &[u32],
    max_new_tokens: usize,
    vocab_size: u32,
    eos_token_ids: &[u32],
) -> Vec<u32> {
    let mut tokens = Vec::with_capacity(max_new_tokens);
    let mut last = prompt.last().copied().unwrap_or(0);
    while tokens.len() < max_new_tokens.max(1) {
        last = (last + 1) % vocab_size;
        tokens.push(last);
        if eos_token_ids.contains(&last) {
            break;
        }
    }
    tokens
}

/// The prompt logprob the fake reports for `token_id` (NaN for a sequence's first token).
pub fn fake_prompt_logprob(position: usize, token_id: u32) -> f32 {
    if position == 0 {
        f32::NAN
    } else {
        -((token_id % 7) as f32) - 0.5
    }
}

impl FakeShard {
    pub fn new(config: FakeShardConfig) -> Self {
        Self {
            config,
            state: Mutex::default(),
            step_turn: tokio::sync::Mutex::new(()),
            started_step_id: tokio::sync::watch::Sender::new(0),
            steps_in_flight: Mutex::new((0, 0)),
        }
    }

    pub fn config(&self) -> &FakeShardConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// At the `step_index`-th Prefill/Decode call (0-based) the fake "crashes": it forgets
    /// everything and is unreachable (Transport errors, failing health) for `down_for`, like
    /// a killed shard process that its launcher restarts.
    pub fn crash_at_step(&self, step_index: usize, down_for: Duration) {
        self.lock().crash_plan = Some((step_index, down_for));
    }

    pub fn num_warmups(&self) -> usize {
        self.lock().num_warmups
    }

    fn check_reachable(&self) -> ShardResult<()> {
        let mut state = self.lock();
        match state.down_until {
            Some(until) if std::time::Instant::now() < until => {
                Err(ShardError::Transport("the fake shard is down".to_string()))
            }
            Some(_) => {
                state.down_until = None;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The next `num_steps` Prefill/Decode calls fail with a gRPC-style status.
    pub fn fail_next_steps(&self, num_steps: usize) {
        self.lock().num_failures_to_inject = num_steps;
    }

    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    pub fn released_ids(&self) -> Vec<u64> {
        self.lock().released_ids.clone()
    }

    pub fn num_live_requests(&self) -> usize {
        self.lock().requests.len()
    }

    pub fn num_clears(&self) -> usize {
        self.lock().num_clears
    }

    pub fn steps(&self) -> Vec<StepSummary> {
        self.lock().steps.clone()
    }

    /// The most step calls that were in flight at once (2 when the router sent a step before
    /// the previous one answered).
    pub fn max_steps_in_flight(&self) -> usize {
        self.lock_steps_in_flight().1
    }

    fn lock_steps_in_flight(&self) -> MutexGuard<'_, (usize, usize)> {
        self.steps_in_flight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn step(&self, step: proto::Step) -> ShardResult<proto::StepResponse> {
        {
            let mut in_flight = self.lock_steps_in_flight();
            in_flight.0 += 1;
            in_flight.1 = in_flight.1.max(in_flight.0);
        }
        let answer = self.step_in_order(step).await;
        self.lock_steps_in_flight().0 -= 1;
        answer
    }

    /// Steps that overtook the one they must follow wait for it to take its turn first.
    async fn step_in_order(&self, step: proto::Step) -> ShardResult<proto::StepResponse> {
        if step.after_step_id != 0 {
            let mut started = self.started_step_id.subscribe();
            let _ = started
                .wait_for(|&started_id| started_id >= step.after_step_id)
                .await;
        }
        let _turn = self.step_turn.lock().await;
        self.started_step_id
            .send_modify(|started_id| *started_id = (*started_id).max(step.step_id));
        self.run_step(step).await
    }

    async fn run_step(&self, step: proto::Step) -> ShardResult<proto::StepResponse> {
        if !self.config.step_delay.is_zero() {
            tokio::time::sleep(self.config.step_delay).await;
        }
        self.check_reachable()?;
        let mut state = self.lock();
        if let Some((crash_step, down_for)) = state.crash_plan {
            if state.steps.len() == crash_step {
                state.crash_plan = None;
                state.requests.clear();
                state.block_slots.clear();
                state.down_until = Some(std::time::Instant::now() + down_for);
                return Err(ShardError::Transport("the fake shard crashed".to_string()));
            }
        }
        if state.num_failures_to_inject > 0 {
            state.num_failures_to_inject -= 1;
            return Err(ShardError::Status("injected step failure".to_string()));
        }
        for request_id in step.release_request_ids {
            let was_forgotten = state.forgotten_ids.contains(&request_id);
            if state.requests.remove(&request_id).is_none() && !was_forgotten {
                state
                    .violations
                    .push(format!("release of unknown request {request_id}"));
            }
            state.released_ids.push(request_id);
        }
        // A running request that was handed new tokens decodes; the others compute prompt.
        let (decodes, chunks): (Vec<_>, Vec<_>) =
            step.running_requests.into_iter().partition(|running| {
                !running.new_token_ids.is_empty() || running.append_generated_tokens
            });
        let mut summary = StepSummary {
            num_chunks: step.new_requests.len() + chunks.len(),
            num_decodes: decodes.len(),
            num_appending: decodes
                .iter()
                .filter(|running| running.append_generated_tokens)
                .count(),
            num_prefill_tokens: step
                .new_requests
                .iter()
                .map(|new| new.num_scheduled_tokens)
                .chain(chunks.iter().map(|running| running.num_scheduled_tokens))
                .sum::<u32>() as usize,
            ..StepSummary::default()
        };
        let mut generations = Vec::new();
        for new in step.new_requests {
            generations.push(model::run_new(&mut state, &self.config, new));
        }
        for running in chunks.into_iter().chain(decodes) {
            generations.push(model::run_running(&mut state, &self.config, running));
        }
        model::check_block_ownership(&mut state, self.config.block_size);
        summary.num_resident_tokens = state
            .requests
            .values()
            .map(|request| request.num_computed_tokens)
            .sum();
        summary.num_blocks_in_use = state
            .requests
            .values()
            .flat_map(|request| request.block_table.iter())
            .collect::<std::collections::HashSet<_>>()
            .len();
        state.steps.push(summary);
        Ok(proto::StepResponse {
            generations,
            timings: Some(proto::StepTimings {
                forward_ns: 1_000,
                sampling_ns: 100,
                total_ns: 1_200,
            }),
        })
    }
}

impl ShardClient for FakeShard {
    async fn info(&self) -> ShardResult<proto::InfoResponse> {
        Ok(proto::InfoResponse {
            model_id: "fake".to_string(),
            architecture: "FakeForCausalLM".to_string(),
            dtype: "float32".to_string(),
            device: "cpu".to_string(),
            block_size: self.config.block_size as u32,
            vocab_size: self.config.vocab_size,
            eos_token_ids: self.config.eos_token_ids.clone(),
            max_position_embeddings: (self.config.num_blocks * self.config.block_size) as u32,
            world_size: 1,
            attention_backend: "fake".to_string(),
            model_implementation: "native".to_string(),
            quantization: String::new(),
            kv_cache_dtype: "auto".to_string(),
            supports_chunked_prefill: true,
            supports_prompt_logprobs: true,
            max_top_n_tokens: 10,
            rank_endpoints: Vec::new(),
            lora_adapters: Vec::new(),
        })
    }

    async fn health(&self) -> ShardResult<()> {
        self.check_reachable()
    }

    async fn warmup(&self, _request: proto::WarmupRequest) -> ShardResult<proto::WarmupResponse> {
        self.check_reachable()?;
        self.lock().num_warmups += 1;
        Ok(proto::WarmupResponse {
            num_blocks: self.config.num_blocks as u32,
            max_supported_total_tokens: (self.config.num_blocks * self.config.block_size) as u64,
            ..Default::default()
        })
    }

    async fn prefill(&self, step: proto::Step) -> ShardResult<proto::StepResponse> {
        self.step(step).await
    }

    async fn decode(&self, step: proto::Step) -> ShardResult<proto::StepResponse> {
        self.step(step).await
    }

    async fn filter(&self, keep_request_ids: Vec<u64>) -> ShardResult<()> {
        let mut state = self.lock();
        let gone: Vec<u64> = state
            .requests
            .keys()
            .filter(|request_id| !keep_request_ids.contains(request_id))
            .copied()
            .collect();
        for request_id in gone {
            state.requests.remove(&request_id);
            state.released_ids.push(request_id);
        }
        Ok(())
    }

    async fn clear(&self) -> ShardResult<()> {
        let mut state = self.lock();
        state.requests.clear();
        state.num_clears += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
