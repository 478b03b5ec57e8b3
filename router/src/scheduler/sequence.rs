//! One request's scheduling state: its tokens (the router owns them; the shard holds a copy it
//! is sent), how many are computed, what the shard already knows of it, and the channel its
//! events go to. Its KV blocks belong to the `KvCacheManager`.
//!
//! Lifecycle: waiting -> (prompt chunks) -> decoding -> finished. Preemption resets a request
//! to "waiting with nothing computed"; its input then becomes prompt + tokens generated so far,
//! recomputed (after whatever prefix is still cached), and tokens already streamed are never
//! sent again.
//!
//! A step is applied in two halves. When it is sent (`expect_step`), the request counts what
//! the step will compute and the token it will generate (pending: its value is the shard's).
//! When the answer comes (`apply_generation`), the pending token becomes a real one. With
//! asynchronous scheduling the next step is planned between the two halves; a synchronous
//! loop applies them back to back.

use std::time::Instant;

use tokio::sync::mpsc;

use super::batcher::ChunkPlan;
use super::interface::{GenerationError, GenerationEvent, GenerationRequest, TimeoutPhase};
use super::kv_cache_manager::{adapter_root_hash, extend_block_hashes, BlockHash};
use crate::proto;
use crate::telemetry::sequence_trace::SequenceTrace;

pub type EventSender = mpsc::UnboundedSender<GenerationEvent>;

/// What became of a request after its part of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceOutcome {
    /// Still running.
    Running,
    /// Finished, failed or cancelled: it leaves the batch. `needs_release` when the shard may
    /// still hold its state (cancelled) and must be told to forget it; a request the shard
    /// finished or rejected is already forgotten there.
    Left { needs_release: bool },
}

const FORGOTTEN: SequenceOutcome = SequenceOutcome::Left {
    needs_release: false,
};
const HELD_BY_SHARD: SequenceOutcome = SequenceOutcome::Left {
    needs_release: true,
};

/// A request's entry in a step: the whole request when the shard does not hold it, else what
/// changed since its previous step.
#[derive(Debug, Clone, PartialEq)]
pub enum StepEntry {
    New(proto::NewRequest),
    Running(proto::RunningRequest),
}

/// How much of the request the shard holds (it was sent these and has not forgotten them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ShardCopy {
    num_token_ids: usize,
    num_block_ids: usize,
}

#[derive(Debug)]
pub struct Sequence {
    pub request_id: u64,
    /// Prompt followed by every generated token.
    token_ids: Vec<u32>,
    num_prompt_tokens: usize,
    /// Tokens the current prefill must compute (prompt, plus generated tokens after a
    /// preemption); fixed while prefilling.
    num_input_tokens: usize,
    /// Tokens whose K/V are in the cache once the steps sent so far have run.
    num_computed_tokens: usize,
    /// Of those, the ones computed by steps whose answer came back: only these may enter the
    /// prefix cache (a step in flight can still fail, or reject the request).
    num_confirmed_tokens: usize,
    /// Tokens that steps in flight generate, not in token_ids until their answers come.
    num_pending_tokens: usize,
    is_decoding: bool,
    /// Chain hashes of token_ids' full blocks (prefix-cache keys), extended as tokens arrive.
    block_hashes: Vec<BlockHash>,
    /// Its LoRA adapter's root hash (None: the base model): starts the block hash chain, and
    /// tells adapters apart when the batcher counts them.
    adapter_key: Option<BlockHash>,
    /// None while the shard does not hold the request (new, or preempted / released).
    shard_copy: Option<ShardCopy>,
    parameters: proto::RequestParameters,
    events: EventSender,
    received_at: Instant,
    deadline: Option<Instant>,
    first_scheduled_at: Option<Instant>,
    /// Prompt logprobs gathered over chunks until PrefillDone is sent.
    prompt_logprobs: Vec<f32>,
    is_prefill_done_sent: bool,
    /// Its queue / prefill / decode spans under the API request's span.
    trace: SequenceTrace,
}

impl Sequence {
    pub fn new(request_id: u64, request: GenerationRequest, events: EventSender) -> Self {
        let num_prompt_tokens = request.input_ids.len();
        let adapter_key = adapter_root_hash(&request.parameters.adapter_id);
        Self {
            request_id,
            token_ids: request.input_ids,
            num_prompt_tokens,
            num_input_tokens: num_prompt_tokens,
            num_computed_tokens: 0,
            num_confirmed_tokens: 0,
            num_pending_tokens: 0,
            is_decoding: false,
            block_hashes: Vec::new(),
            adapter_key,
            shard_copy: None,
            parameters: request.parameters,
            events,
            received_at: request.received_at,
            deadline: request.deadline,
            first_scheduled_at: None,
            prompt_logprobs: Vec::new(),
            is_prefill_done_sent: false,
            trace: SequenceTrace::queued(request.span),
        }
    }

    pub fn trace(&self) -> &SequenceTrace {
        &self.trace
    }

    #[cfg(test)]
    pub fn generated_token_ids(&self) -> &[u32] {
        &self.token_ids[self.num_prompt_tokens..]
    }

    /// The receiver was dropped (client gone, or a stop sequence matched upstream).
    pub fn is_cancelled(&self) -> bool {
        self.events.is_closed()
    }

    pub fn is_past_deadline(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|deadline| now >= deadline)
    }

    /// Sends the timeout error; the caller then drops the request like a cancelled one.
    pub fn fail_timed_out(&self) {
        // A preempted or replayed request waits in the queue but has started.
        let phase = if self.first_scheduled_at.is_some() {
            TimeoutPhase::Generating
        } else {
            TimeoutPhase::Queued
        };
        let budget = self
            .deadline
            .map(|deadline| deadline.saturating_duration_since(self.received_at))
            .unwrap_or_default();
        self.fail(GenerationError::TimedOut {
            budget_s: budget.as_secs_f64(),
            phase,
        });
    }

    pub fn token_ids(&self) -> &[u32] {
        &self.token_ids
    }

    /// Chain hashes of the full blocks of `token_ids()`, as of the last `refresh_block_hashes`.
    pub fn block_hashes(&self) -> &[BlockHash] {
        &self.block_hashes
    }

    pub fn refresh_block_hashes(&mut self, block_size: usize) {
        let root = self.adapter_key;
        extend_block_hashes(&mut self.block_hashes, &self.token_ids, block_size, root);
    }

    /// Which LoRA adapter it runs with (None: the base model), as a comparable key.
    pub fn adapter_key(&self) -> Option<BlockHash> {
        self.adapter_key
    }

    /// Tokens of the sequence the step after next must have in the cache: the input while
    /// prefilling, every token (pending ones included) once decoding.
    pub fn num_tokens(&self) -> usize {
        if self.is_decoding {
            self.token_ids.len() + self.num_pending_tokens
        } else {
            self.num_input_tokens
        }
    }

    /// The token a step in flight generates is its last (max_new_tokens): no later step
    /// needs it, whatever that token is.
    pub fn is_finishing(&self) -> bool {
        self.num_pending_tokens > 0
            && self.token_ids.len() + self.num_pending_tokens >= self.max_num_tokens()
    }

    /// Computed tokens whose step answered (what the prefix cache may index).
    pub fn num_confirmed_tokens(&self) -> usize {
        self.num_confirmed_tokens
    }

    /// Tokens the sequence can reach: prompt plus max_new_tokens.
    pub fn max_num_tokens(&self) -> usize {
        let max_new_tokens = self
            .parameters
            .stopping
            .map_or(0, |stopping| stopping.max_new_tokens as usize);
        self.num_prompt_tokens + max_new_tokens
    }

    pub fn num_input_tokens(&self) -> usize {
        self.num_input_tokens
    }

    pub fn num_computed_tokens(&self) -> usize {
        self.num_computed_tokens
    }

    pub fn is_decoding(&self) -> bool {
        self.is_decoding
    }

    /// Prompt logprobs still to be delivered: they need every prompt token computed here,
    /// so such a request does not start from the prefix cache.
    pub fn wants_prompt_logprobs(&self) -> bool {
        self.parameters.prompt_logprobs && !self.is_prefill_done_sent
    }

    /// Admission: the first `num_cached_tokens` are already in the KV cache.
    pub fn start_after_cached_prefix(&mut self, num_cached_tokens: usize) {
        debug_assert!(num_cached_tokens < self.num_input_tokens.max(1));
        self.num_computed_tokens = num_cached_tokens;
        self.num_confirmed_tokens = num_cached_tokens;
    }

    /// This request's entry in a step computing `chunk` (None: a decode) with `block_table`.
    /// `num_lookahead_tokens`: slots reserved after a decode for speculative proposals.
    pub fn step_entry(
        &mut self,
        chunk: Option<&ChunkPlan>,
        block_table: &[u32],
        num_lookahead_tokens: usize,
        now: Instant,
    ) -> StepEntry {
        let num_scheduled_tokens = match chunk {
            Some(chunk) => chunk.num_tokens,
            None => self.num_tokens() - self.num_computed_tokens,
        } as u32;
        if chunk.is_some() {
            self.first_scheduled_at.get_or_insert(now);
            self.trace.scheduled();
        } else {
            // A decode step belongs to the decode phase, also when it is sent before the
            // answer of the prompt's last step (asynchronous scheduling).
            self.trace.prefill_done();
        }
        // The shard holds the known tokens and those its steps in flight generate.
        let num_shard_tokens = self.token_ids.len() + self.num_pending_tokens;
        let entry = match self.shard_copy {
            None => {
                debug_assert_eq!(
                    self.num_pending_tokens, 0,
                    "a new request has no step in flight"
                );
                StepEntry::New(self.new_request(num_scheduled_tokens, block_table))
            }
            Some(copy) => {
                // A token generated by a step still in flight is appended by the shard; tokens
                // the router knows and never sent all predate that step.
                let append_generated_tokens =
                    self.num_pending_tokens > 0 && copy.num_token_ids < num_shard_tokens;
                debug_assert!(
                    !append_generated_tokens || copy.num_token_ids >= self.token_ids.len(),
                    "known tokens the shard lacks come before pending ones"
                );
                StepEntry::Running(proto::RunningRequest {
                    request_id: self.request_id,
                    new_token_ids: self
                        .token_ids
                        .get(copy.num_token_ids..)
                        .unwrap_or(&[])
                        .to_vec(),
                    new_block_ids: block_table
                        .get(copy.num_block_ids..)
                        .unwrap_or(&[])
                        .to_vec(),
                    num_scheduled_tokens,
                    num_lookahead_tokens: num_lookahead_tokens as u32,
                    append_generated_tokens,
                })
            }
        };
        self.shard_copy = Some(ShardCopy {
            num_token_ids: num_shard_tokens,
            num_block_ids: block_table.len(),
        });
        entry
    }

    /// The first half of applying a step, when it is sent: what it computes counts as
    /// computed, and a step that reaches the end of the tokens generates one pending token.
    pub fn expect_step(&mut self, chunk: Option<&ChunkPlan>) {
        match chunk {
            Some(chunk) => {
                self.num_computed_tokens += chunk.num_tokens;
                if chunk.is_last_chunk {
                    self.is_decoding = true;
                    self.num_pending_tokens += 1;
                }
            }
            None => {
                self.num_computed_tokens = self.num_tokens();
                self.num_pending_tokens += 1;
            }
        }
    }

    fn new_request(&self, num_scheduled_tokens: u32, block_table: &[u32]) -> proto::NewRequest {
        let mut parameters = self.parameters.clone();
        // Prompt logprobs were already delivered before the preemption.
        parameters.prompt_logprobs &= !self.is_prefill_done_sent;
        proto::NewRequest {
            request_id: self.request_id,
            token_ids: self.token_ids.clone(),
            num_prompt_tokens: self.num_prompt_tokens as u32,
            num_cached_tokens: self.num_computed_tokens as u32,
            num_scheduled_tokens,
            block_ids: block_table.to_vec(),
            parameters: Some(parameters),
        }
    }

    /// Back to "waiting, nothing computed"; the shard no longer holds it. The caller frees
    /// its blocks.
    pub fn reset_for_preemption(&mut self) {
        self.num_input_tokens = self.token_ids.len();
        self.num_computed_tokens = 0;
        self.num_confirmed_tokens = 0;
        // Tokens of steps in flight were never streamed: the recomputation generates them.
        self.num_pending_tokens = 0;
        self.is_decoding = false;
        self.shard_copy = None;
        self.trace.preempted();
        if !self.is_prefill_done_sent {
            self.prompt_logprobs.clear(); // recomputed from the first token
        }
    }

    /// Sends the request's final error event (ignored when the receiver is gone).
    pub fn fail(&self, error: GenerationError) {
        let _ = self.events.send(GenerationEvent::Error(error));
    }
}

mod answer;

#[cfg(test)]
#[path = "sequence_tests.rs"]
mod tests;
