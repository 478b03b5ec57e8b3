//! The first half of a step around the RPC: applying a plan to the scheduler state
//! (preemptions, admissions with their cached prefixes, block grants, speculative lookahead
//! slots) and building the shard request as diffs: a request's tokens and blocks are sent
//! once, then only what changed.

use std::collections::HashMap;
use std::time::Instant;

use super::batcher::{ChunkPlan, StepPlan};
use super::plan_views::prefix_hit;
use super::sequence::{Sequence, StepEntry};
use super::state::{SchedulerState, StepMembers};
use crate::metrics::steps::StepMethod;
use crate::proto;
use crate::telemetry::step_trace::StepTrace;

/// The RPC a step sends.
#[derive(Debug, Clone, PartialEq)]
pub enum StepRequest {
    /// The step computes prompt tokens (some request is new or prefilling).
    Prefill(proto::Step),
    /// Every request in it decodes.
    Decode(proto::Step),
}

impl StepRequest {
    pub fn method(&self) -> StepMethod {
        match self {
            StepRequest::Prefill(_) => StepMethod::Prefill,
            StepRequest::Decode(_) => StepMethod::Decode,
        }
    }

    /// Numbers the step, and names the step the shard must have started first (0: none).
    pub fn number(&mut self, step_id: u64, after_step_id: u64) {
        let (StepRequest::Prefill(step) | StepRequest::Decode(step)) = self;
        step.step_id = step_id;
        step.after_step_id = after_step_id;
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

impl SchedulerState {
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
            let sequence = &mut self.running[position];
            let entry = sequence.step_entry(
                chunk.as_ref(),
                self.kv.block_table(request_id),
                num_lookahead,
                now,
            );
            sequence.expect_step(chunk.as_ref());
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
}
