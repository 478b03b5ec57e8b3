//! The scheduler task's own state (running batch, waiting queue, KV cache manager) and the
//! second half of a step around the RPC: turning the shard's answer (or failure) into events,
//! cached / freed blocks and requests to release. The first half, turning a plan into a shard
//! request, is `prepare.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::batcher::{plan_step, ChunkPlan, StepPlan};
use super::budget::BatchLimits;
use super::interface::GenerationError;
use super::kv_cache_manager::{KvCacheCounters, KvCacheManager};
use super::plan_views::{running_views, waiting_views};
use super::queue::{WaitingGate, WaitingQueue};
use super::sequence::{Sequence, SequenceOutcome};
use super::stats::SpeculationTally;
use crate::proto;
use crate::shard_client::ShardError;

/// The requests in a step: request id -> its chunk (None for a decode).
pub type StepMembers = HashMap<u64, Option<ChunkPlan>>;

#[derive(Debug)]
pub struct SchedulerState {
    pub(super) limits: BatchLimits,
    /// Admission order, oldest first.
    pub(super) running: Vec<Sequence>,
    pub(super) waiting: WaitingQueue<Sequence>,
    pub(super) kv: KvCacheManager,
    /// Requests the shard must forget at the next call (cancelled, preempted).
    pub(super) pending_release_ids: Vec<u64>,
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
            // Members that already left (finished by an earlier step's answer, cancelled,
            // timed out) are not in `running`: their answers are dropped below.
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
            if !members.contains_key(&request_id) {
                tracing::warn!(
                    request_id,
                    "the shard answered for a request not in the step"
                );
            }
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
            sequence.num_confirmed_tokens(),
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
