//! The scheduler task's own state (running batch, waiting queue, KV cache manager) and the two
//! halves of a step around the RPC: turning a plan into a shard request (as diffs: the shard
//! is sent a request's tokens and blocks once, then only what changed), and turning the
//! shard's answer (or failure) into events, cached / freed blocks and requests to release.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::batcher::{plan_step, ChunkPlan, StepPlan};
use super::budget::BatchLimits;
use super::interface::GenerationError;
use super::kv_cache_manager::{KvCacheCounters, KvCacheManager};
use super::plan_views::{prefix_hit, running_views, waiting_views};
use super::queue::{WaitingGate, WaitingQueue};
use super::sequence::{Sequence, SequenceOutcome, StepEntry};
use super::stats::SpeculationTally;
use crate::metrics::steps::StepMethod;
use crate::proto;
use crate::shard_client::ShardError;
use crate::telemetry::step_trace::StepTrace;

/// The RPC a step sends.
#[derive(Debug, Clone, PartialEq)]
pub enum StepRequest {
    /// The step computes prompt tokens (some request is new or prefilling).
    Prefill(proto::Step),
    /// Every request in it decodes.
    Decode(proto::Step),
}

/// The requests in a step: request id -> its chunk (None for a decode).
pub type StepMembers = HashMap<u64, Option<ChunkPlan>>;

impl StepRequest {
    pub fn method(&self) -> StepMethod {
        match self {
            StepRequest::Prefill(_) => StepMethod::Prefill,
            StepRequest::Decode(_) => StepMethod::Decode,
        }
    }
}

/// A planned step ready to send: the request plus who is in it.
#[derive(Debug)]
pub struct PreparedStep {
    pub request: StepRequest,
    pub members: StepMembers,
    pub num_tokens: usize,
    /// Of num_tokens, those of prompt chunks (cached prefixes excluded).
    pub num_prompt_tokens: usize,
    pub num_preempted: usize,
    /// Where the step's span goes in the traces of its requests.
    pub trace: StepTrace,
}

#[derive(Debug)]
pub struct SchedulerState {
    limits: BatchLimits,
    /// Admission order, oldest first.
    running: Vec<Sequence>,
    waiting: WaitingQueue<Sequence>,
    kv: KvCacheManager,
    /// Requests the shard must forget at the next call (cancelled, preempted).
    pending_release_ids: Vec<u64>,
}

impl SchedulerState {
    pub fn new(limits: BatchLimits, kv: KvCacheManager, gate: Arc<WaitingGate>) -> Self {
        Self {
            limits,
            running: Vec::new(),
            waiting: WaitingQueue::new(gate),
            kv,
            pending_release_ids: Vec::new(),
        }
    }

    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.kv.num_free_blocks()
    }

    pub fn num_total_blocks(&self) -> usize {
        self.kv.num_total_blocks()
    }

    pub fn num_cached_blocks(&self) -> usize {
        self.kv.num_cached_blocks()
    }

    pub fn kv_counters(&self) -> KvCacheCounters {
        self.kv.counters()
    }

    /// Queues a newly submitted request (its waiting slot is already reserved).
    pub fn accept(&mut self, mut sequence: Sequence) {
        sequence.refresh_block_hashes(self.kv.block_size());
        self.waiting.push_reserved(sequence);
    }

    /// Drops requests whose receiver is gone and fails those past their deadline (a queued
    /// one never reaches a shard): running ones free their blocks and are released in the
    /// shard at the next call; waiting ones hold nothing.
    pub fn drop_cancelled_and_expired(&mut self, now: Instant) {
        self.waiting.remove_where(|sequence| {
            let is_expired = sequence.is_past_deadline(now);
            if is_expired {
                sequence.fail_timed_out();
            }
            is_expired || sequence.is_cancelled()
        });
        let mut index = 0;
        while index < self.running.len() {
            let sequence = &self.running[index];
            let is_expired = sequence.is_past_deadline(now);
            if is_expired {
                sequence.fail_timed_out();
            }
            if is_expired || sequence.is_cancelled() {
                let sequence = self.running.remove(index);
                self.kv.free(sequence.request_id);
                self.pending_release_ids.push(sequence.request_id);
            } else {
                index += 1;
            }
        }
    }

    pub fn plan(&self) -> StepPlan {
        let running = running_views(&self.running, &self.kv);
        // At most this many can be admitted; the rest of the queue is not looked at.
        let num_admissible = self.limits.max_batch_size.saturating_sub(running.len());
        let waiting = waiting_views(
            self.waiting.iter().take(num_admissible),
            &self.running,
            &self.kv,
        );
        plan_step(&self.limits, &running, &waiting, self.kv.num_free_blocks())
    }

    /// Takes the releases that could not ride on a step (sent with Filter when idle).
    pub fn take_pending_release_ids(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.pending_release_ids)
    }

    pub fn restore_pending_release_ids(&mut self, mut release_ids: Vec<u64>) {
        self.pending_release_ids.append(&mut release_ids);
    }

    pub fn running_ids(&self) -> Vec<u64> {
        self.running
            .iter()
            .map(|sequence| sequence.request_id)
            .collect()
    }

    /// Applies `plan` (preemptions, admissions with their cached prefixes, block grants) and
    /// builds the step's request.
    pub fn prepare(&mut self, plan: &StepPlan, now: Instant) -> PreparedStep {
        for &request_id in &plan.preempted_ids {
            self.preempt(request_id);
        }
        // Cached prefixes are taken before any allocation, which could otherwise evict them.
        for _ in 0..plan.num_admitted {
            if let Some(sequence) = self.waiting.pop_front() {
                self.admit(sequence);
            }
        }
        let positions: HashMap<u64, usize> = self
            .running
            .iter()
            .enumerate()
            .map(|(position, sequence)| (sequence.request_id, position))
            .collect();
        let mut members = HashMap::with_capacity(plan.decodes.len() + plan.chunks.len());
        let mut step = proto::Step {
            release_request_ids: std::mem::take(&mut self.pending_release_ids),
            ..Default::default()
        };
        let (mut num_tokens, mut num_prompt_tokens) = (0, 0);
        let planned: Vec<(u64, Option<ChunkPlan>)> = plan
            .decodes
            .iter()
            .map(|decode| (decode.request_id, None))
            .chain(
                plan.chunks
                    .iter()
                    .map(|chunk| (chunk.request_id, Some(*chunk))),
            )
            .collect();
        // Blocks for everything the plan computes first; speculation gets what is left.
        let granted: Vec<(u64, Option<ChunkPlan>, usize)> = planned
            .into_iter()
            .filter_map(|(request_id, chunk)| {
                let position = self.grant(&positions, request_id, chunk.as_ref())?;
                Some((request_id, chunk, position))
            })
            .collect();
        let mut num_resident_tokens_left = plan.num_resident_tokens_left;
        let lookaheads: Vec<usize> = granted
            .iter()
            .map(|(_, chunk, position)| match chunk {
                None => self.reserve_lookahead(*position, &mut num_resident_tokens_left),
                Some(_) => 0,
            })
            .collect();
        for ((request_id, chunk, position), num_lookahead) in granted.into_iter().zip(lookaheads) {
            let entry = self.running[position].step_entry(
                chunk.as_ref(),
                self.kv.block_table(request_id),
                num_lookahead,
                now,
            );
            let num_entry_tokens = match &entry {
                StepEntry::New(new) => new.num_scheduled_tokens,
                StepEntry::Running(running) => running.num_scheduled_tokens,
            } as usize;
            num_tokens += num_entry_tokens;
            if chunk.is_some() {
                num_prompt_tokens += num_entry_tokens;
            }
            match entry {
                StepEntry::New(new) => step.new_requests.push(new),
                StepEntry::Running(running) => step.running_requests.push(running),
            }
            members.insert(request_id, chunk);
        }
        let request = if plan.chunks.is_empty() {
            StepRequest::Decode(step)
        } else {
            StepRequest::Prefill(step)
        };
        // `running` is in admission order, so the oldest traced member comes first.
        let trace = StepTrace::collect(
            self.running
                .iter()
                .filter(|sequence| members.contains_key(&sequence.request_id))
                .map(Sequence::trace),
        );
        PreparedStep {
            request,
            members,
            num_tokens,
            num_prompt_tokens,
            num_preempted: plan.preempted_ids.len(),
            trace,
        }
    }

    /// Starts a waiting request from its cached prefix (same lookup as the plan's).
    fn admit(&mut self, mut sequence: Sequence) {
        let hit = prefix_hit(&sequence, &self.kv);
        let num_query_tokens = sequence.num_input_tokens();
        match self
            .kv
            .acquire_prefix(sequence.request_id, hit, num_query_tokens)
        {
            Ok(num_cached_tokens) => sequence.start_after_cached_prefix(num_cached_tokens),
            Err(error) => tracing::error!(request_id = sequence.request_id, %error, "admission"),
        }
        self.running.push(sequence);
    }

    /// Moves a running request back to the front of the waiting queue, freeing its blocks.
    fn preempt(&mut self, request_id: u64) {
        let Some(position) = self
            .running
            .iter()
            .rposition(|s| s.request_id == request_id)
        else {
            tracing::error!(
                request_id,
                "planned preemption of a request that is not running"
            );
            return;
        };
        let mut sequence = self.running.remove(position);
        self.kv.free(request_id);
        sequence.reset_for_preemption();
        self.pending_release_ids.push(request_id);
        self.waiting.push_front_preempted(sequence);
    }

    /// Lookahead slots for the decode of the running request at `position`: up to
    /// `--speculate`, never past its max_new_tokens nor past `num_resident_tokens_left`
    /// (accepted proposals become resident tokens; taken from it), and only from blocks
    /// nobody planned for (when short, what its last block still holds). Returns how many.
    fn reserve_lookahead(
        &mut self,
        position: usize,
        num_resident_tokens_left: &mut usize,
    ) -> usize {
        let sequence = &self.running[position];
        let num_tokens = sequence.num_tokens();
        // A step ends with at most 1 + lookahead new tokens: stay within max_new_tokens.
        let wanted = self
            .limits
            .num_speculative_tokens
            .min(sequence.max_num_tokens().saturating_sub(num_tokens + 1))
            .min(*num_resident_tokens_left);
        if wanted == 0 {
            return 0;
        }
        let request_id = sequence.request_id;
        let granted = if self
            .kv
            .allocate_slots(request_id, num_tokens, wanted)
            .is_ok()
        {
            wanted
        } else {
            let held_slots = self.kv.block_table(request_id).len() * self.kv.block_size();
            held_slots.saturating_sub(num_tokens).min(wanted)
        };
        *num_resident_tokens_left -= granted;
        granted
    }

    /// Grows a planned request's block table for what the step computes; returns its
    /// position in `running`, or None (request skipped) if the plan was wrong.
    fn grant(
        &mut self,
        positions: &HashMap<u64, usize>,
        request_id: u64,
        chunk: Option<&ChunkPlan>,
    ) -> Option<usize> {
        let position = positions.get(&request_id).copied();
        let sequence = position.and_then(|p| self.running.get(p));
        let Some(sequence) = sequence else {
            tracing::error!(request_id, "planned request is not running");
            return None;
        };
        if chunk.is_some_and(|chunk| chunk.num_cached_tokens != sequence.num_computed_tokens()) {
            tracing::error!(
                request_id,
                "planned chunk does not start at the cached tokens"
            );
            return None;
        }
        let num_tokens_after = match chunk {
            Some(chunk) => chunk.num_cached_tokens + chunk.num_tokens,
            None => sequence.num_tokens(),
        };
        if let Err(error) = self.kv.allocate_slots(request_id, num_tokens_after, 0) {
            tracing::error!(request_id, %error, "planned KV blocks are not free");
            return None;
        }
        position
    }

    /// Applies the shard's answer: events out, finished / failed / cancelled requests leave.
    /// Returns what speculative decodes of the step proposed and accepted.
    pub fn complete(
        &mut self,
        members: &StepMembers,
        response: proto::StepResponse,
    ) -> SpeculationTally {
        let mut tally = SpeculationTally::default();
        let mut generations: HashMap<u64, proto::Generation> = response
            .generations
            .into_iter()
            .map(|generation| (generation.request_id, generation))
            .collect();
        let mut index = 0;
        while index < self.running.len() {
            let request_id = self.running[index].request_id;
            let Some(chunk) = members.get(&request_id) else {
                index += 1;
                continue;
            };
            let generation = generations.remove(&request_id);
            if let Some(generation) = &generation {
                if generation.num_proposed_tokens > 0 {
                    // Each token past the first was a proposal the shard accepted.
                    let num_accepted = (generation.tokens.len() as u32)
                        .saturating_sub(1)
                        .min(generation.num_proposed_tokens);
                    tally
                        .decodes
                        .push((generation.num_proposed_tokens, num_accepted));
                }
            }
            let outcome = self.running[index].apply_generation(chunk.as_ref(), generation);
            self.commit_computed(index);
            match outcome {
                SequenceOutcome::Running => index += 1,
                SequenceOutcome::Left { needs_release } => {
                    // Its computed blocks stay cached (a follow-up turn reuses them).
                    let sequence = self.running.remove(index);
                    self.kv.free(sequence.request_id);
                    if needs_release {
                        self.pending_release_ids.push(request_id);
                    }
                }
            }
        }
        for request_id in generations.into_keys() {
            tracing::warn!(
                request_id,
                "the shard answered for a request not in the step"
            );
        }
        tally
    }

    /// Indexes the blocks the running request at `index` has now computed.
    fn commit_computed(&mut self, index: usize) {
        let sequence = &mut self.running[index];
        sequence.refresh_block_hashes(self.kv.block_size());
        self.kv.commit_computed(
            sequence.request_id,
            sequence.token_ids(),
            sequence.block_hashes(),
            sequence.num_computed_tokens(),
        );
    }

    /// The shards are gone (a crashed process; its KV cache went with it): every running
    /// request goes back to the front of the queue, in order, to be replayed from its tokens
    /// on the restarted shards. Returns how many were running.
    pub fn requeue_all_for_replay(&mut self) -> usize {
        let running = std::mem::take(&mut self.running);
        let num_running = running.len();
        for mut sequence in running.into_iter().rev() {
            self.kv.free(sequence.request_id);
            sequence.reset_for_preemption();
            self.waiting.push_front_preempted(sequence);
        }
        self.pending_release_ids.clear();
        num_running
    }

    /// A restarted shard holds `num_blocks` empty KV blocks: the block ledger and the prefix
    /// cache start over. Waiting requests that no longer fit the cache alone fail.
    pub fn reset_kv_cache(&mut self, num_blocks: usize) {
        let (block_size, prefix_caching) = (self.kv.block_size(), self.kv.is_prefix_caching());
        self.kv = KvCacheManager::new(num_blocks, block_size, prefix_caching);
        self.waiting.remove_where(|sequence| {
            let needed_blocks = sequence.max_num_tokens().div_ceil(block_size);
            let too_large = needed_blocks > num_blocks;
            if too_large {
                sequence.fail(GenerationError::TooLargeForCache {
                    needed_blocks,
                    total_blocks: num_blocks,
                });
            }
            too_large
        });
    }

    /// The step's RPC failed: its requests fail; the caller clears the shard, so the running
    /// requests that were not in the step go back to the waiting queue to be recomputed.
    pub fn fail_step(&mut self, members: &StepMembers, error: &ShardError) {
        let mut held_over = Vec::new();
        for mut sequence in std::mem::take(&mut self.running) {
            self.kv.free(sequence.request_id);
            if members.contains_key(&sequence.request_id) {
                sequence.fail(GenerationError::Shard(error.to_string()));
            } else {
                sequence.reset_for_preemption();
                held_over.push(sequence);
            }
        }
        // Front-pushing newest first keeps their relative order.
        for sequence in held_over.into_iter().rev() {
            self.waiting.push_front_preempted(sequence);
        }
        self.pending_release_ids.clear();
    }
}
