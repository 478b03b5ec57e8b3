//! The scheduler task's own state (running batch, waiting queue, KV ledger) and the two
//! halves of a step around the RPC: turning a plan into a shard request, and turning the
//! shard's answer (or failure) into events, freed blocks and requests to release.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::batcher::{plan_step, ChunkPlan, RunningView, StepPlan, WaitingView};
use super::block_allocator::BlockAllocator;
use super::budget::BatchLimits;
use super::interface::GenerationError;
use super::queue::{WaitingGate, WaitingQueue};
use super::sequence::{Sequence, SequenceOutcome};
use crate::metrics::steps::StepMethod;
use crate::proto;
use crate::shard_client::ShardError;
use crate::telemetry::step_trace::StepTrace;

/// The RPC a step sends.
#[derive(Debug, Clone, PartialEq)]
pub enum StepRequest {
    Prefill(proto::PrefillRequest),
    Decode(proto::DecodeRequest),
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
    allocator: BlockAllocator,
    /// Requests the shard must forget at the next call (cancelled, preempted).
    pending_release_ids: Vec<u64>,
}

impl SchedulerState {
    pub fn new(limits: BatchLimits, num_blocks: usize, gate: Arc<WaitingGate>) -> Self {
        Self {
            limits,
            running: Vec::new(),
            waiting: WaitingQueue::new(gate),
            allocator: BlockAllocator::new(num_blocks),
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
        self.allocator.num_free()
    }

    pub fn num_total_blocks(&self) -> usize {
        self.allocator.num_total()
    }

    /// Queues a newly submitted request (its waiting slot is already reserved).
    pub fn accept(&mut self, sequence: Sequence) {
        self.waiting.push_reserved(sequence);
    }

    /// Drops requests whose receiver is gone: running ones free their blocks and are released
    /// in the shard at the next call; waiting ones hold nothing.
    pub fn drop_cancelled(&mut self) {
        self.waiting.remove_where(Sequence::is_cancelled);
        let mut index = 0;
        while index < self.running.len() {
            if self.running[index].is_cancelled() {
                let mut sequence = self.running.remove(index);
                self.free_blocks(&mut sequence);
                self.pending_release_ids.push(sequence.request_id);
            } else {
                index += 1;
            }
        }
    }

    pub fn plan(&self) -> StepPlan {
        let running: Vec<RunningView> = self.running.iter().map(Sequence::running_view).collect();
        // At most this many can be admitted; the rest of the queue is not looked at.
        let num_admissible = self.limits.max_batch_size.saturating_sub(running.len());
        let waiting: Vec<WaitingView> = self
            .waiting
            .iter()
            .take(num_admissible)
            .map(Sequence::waiting_view)
            .collect();
        plan_step(&self.limits, &running, &waiting, self.allocator.num_free())
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

    /// Applies `plan` (preemptions, admissions, block grants) and builds the step's request.
    pub fn prepare(&mut self, plan: &StepPlan, now: Instant) -> PreparedStep {
        for &request_id in &plan.preempted_ids {
            self.preempt(request_id);
        }
        for _ in 0..plan.num_admitted {
            if let Some(sequence) = self.waiting.pop_front() {
                self.running.push(sequence);
            }
        }
        let positions: HashMap<u64, usize> = self
            .running
            .iter()
            .enumerate()
            .map(|(position, sequence)| (sequence.request_id, position))
            .collect();
        let mut members = HashMap::with_capacity(plan.decodes.len() + plan.chunks.len());
        let mut decodes = Vec::with_capacity(plan.decodes.len());
        let mut chunks = Vec::with_capacity(plan.chunks.len());
        let mut num_tokens = 0;
        for decode in &plan.decodes {
            if let Some(sequence) = self.grant(&positions, decode.request_id, decode.num_new_blocks)
            {
                decodes.push(sequence.decode_entry());
                members.insert(decode.request_id, None);
                num_tokens += 1;
            }
        }
        for chunk in &plan.chunks {
            if let Some(sequence) = self.grant(&positions, chunk.request_id, chunk.num_new_blocks) {
                chunks.push(sequence.prefill_chunk(chunk, now));
                members.insert(chunk.request_id, Some(*chunk));
                num_tokens += chunk.num_tokens;
            }
        }
        let release_request_ids = std::mem::take(&mut self.pending_release_ids);
        let request = if chunks.is_empty() {
            StepRequest::Decode(proto::DecodeRequest {
                decodes,
                release_request_ids,
            })
        } else {
            StepRequest::Prefill(proto::PrefillRequest {
                chunks,
                decodes,
                release_request_ids,
            })
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
            num_preempted: plan.preempted_ids.len(),
            trace,
        }
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
        self.free_blocks(&mut sequence);
        sequence.reset_for_preemption();
        self.pending_release_ids.push(request_id);
        self.waiting.push_front_preempted(sequence);
    }

    /// Grows a planned request's block table; None (request skipped) if the plan was wrong.
    fn grant(
        &mut self,
        positions: &HashMap<u64, usize>,
        request_id: u64,
        num_new_blocks: usize,
    ) -> Option<&mut Sequence> {
        let sequence = positions
            .get(&request_id)
            .and_then(|&p| self.running.get_mut(p));
        let Some(sequence) = sequence else {
            tracing::error!(request_id, "planned request is not running");
            return None;
        };
        if !self
            .allocator
            .allocate_into(num_new_blocks, &mut sequence.block_table)
        {
            tracing::error!(request_id, num_new_blocks, "planned KV blocks are not free");
            return None;
        }
        Some(sequence)
    }

    fn free_blocks(&mut self, sequence: &mut Sequence) {
        if let Err(error) = self.allocator.free_table(&mut sequence.block_table) {
            // A bug, not an RPC problem: log it and keep serving with what is left.
            tracing::error!(request_id = sequence.request_id, %error, "KV block ledger corrupted");
            sequence.block_table.clear();
        }
    }

    /// Applies the shard's answer: events out, finished / failed / cancelled requests leave.
    pub fn complete(&mut self, members: &StepMembers, response: proto::StepResponse) {
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
            match self.running[index].apply_generation(chunk.as_ref(), generation) {
                SequenceOutcome::Running => index += 1,
                SequenceOutcome::Left { needs_release } => {
                    let mut sequence = self.running.remove(index);
                    self.free_blocks(&mut sequence);
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
    }

    /// The step's RPC failed: its requests fail; the caller clears the shard, so the running
    /// requests that were not in the step go back to the waiting queue to be recomputed.
    pub fn fail_step(&mut self, members: &StepMembers, error: &ShardError) {
        let mut held_over = Vec::new();
        for mut sequence in std::mem::take(&mut self.running) {
            self.free_blocks(&mut sequence);
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
