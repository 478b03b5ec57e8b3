//! Decides one step: which running requests decode, which prompt chunks of what size run, and
//! which requests are preempted. Pure: it sees counts only and returns a plan.
//!
//! Policy (the reasons behind it):
//! - Running requests are served oldest first and always before new admissions, so a request
//!   that started keeps making progress (chunked prefill / SplitFuse: decodes never stall
//!   behind a long prompt).
//! - When a running request needs blocks that are not free, the NEWEST running request is
//!   preempted (possibly the one asking). The oldest running request is therefore never
//!   preempted, and since every admitted request fits the cache alone, it always finishes:
//!   memory pressure delays requests but cannot deadlock them.
//! - A prompt chunk shrinks to what fits before anything is preempted for it; a prefilling
//!   request only preempts newer ones when it could not compute a single token.
//! - Admission is strictly FIFO, uses only free blocks, and is skipped in a step that
//!   preempted (the cache is under pressure, and a preempted request must not be re-admitted
//!   in the step that releases it).
//! - A waiting request starts after its cached prefix (prefix caching). One whose next block
//!   is being computed right now by another request (the same prompt sent `n` times, or a
//!   shared system prompt arriving together) waits for it instead of computing it again;
//!   FIFO holds, so the queue behind it waits too, for at most that prefill.
//! - A step holds requests of at most `max_loras_per_batch` distinct LoRA adapters (the base
//!   model does not count). Every running request is in every step, so admission enforces it:
//!   a front request whose adapter would be one too many waits (FIFO again: the queue behind
//!   it too) until a running adapter's last request leaves; nothing fails for it.

use std::collections::HashSet;

use super::budget::{BatchLimits, StepBudget};
use super::kv_cache_manager::BlockHash;

/// Tells LoRA adapters apart (their block-hash root); None is the base model.
pub type AdapterKey = Option<BlockHash>;

/// A running request as the batcher sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunningView {
    pub request_id: u64,
    /// Tokens of the sequence known to the router (input + generated).
    pub num_tokens: usize,
    /// Tokens whose K/V are in the cache.
    pub num_computed_tokens: usize,
    pub num_blocks_held: usize,
    /// Blocks that become free when this request is preempted after every newer one was
    /// (blocks shared with older requests stay held).
    pub num_blocks_released: usize,
    /// The prompt (input) is fully computed; the request decodes one token per step.
    pub is_decoding: bool,
    pub adapter: AdapterKey,
}

/// A waiting request as the batcher sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitingView {
    pub request_id: u64,
    /// Prompt plus, for a preempted request, the tokens it generated before.
    pub num_input_tokens: usize,
    /// Leading tokens found in the prefix cache (whole blocks; fewer than num_input_tokens).
    pub num_cached_tokens: usize,
    /// Cached blocks of that prefix that are free now: reusing them takes free blocks.
    pub num_free_cached_blocks: usize,
    /// Its next block is being computed by another request this step or a running one.
    pub is_waiting_for_prefix: bool,
    pub adapter: AdapterKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlan {
    pub request_id: u64,
    /// Tokens already computed; the chunk starts here.
    pub num_cached_tokens: usize,
    pub num_tokens: usize,
    pub is_last_chunk: bool,
    pub num_new_blocks: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodePlan {
    pub request_id: u64,
    pub num_new_blocks: usize,
}

/// One step's decisions. Apply in order: preemptions, then block grants, then admissions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepPlan {
    pub decodes: Vec<DecodePlan>,
    /// Chunks of running (partially prefilled) requests first, then of admitted ones.
    pub chunks: Vec<ChunkPlan>,
    /// Preempted running requests, newest first.
    pub preempted_ids: Vec<u64>,
    /// How many requests from the front of the waiting queue start this step (their first
    /// chunk is among `chunks`).
    pub num_admitted: usize,
    /// `max_batch_total_tokens` minus the tokens resident once the step has run: the room
    /// speculative lookahead may fill with accepted proposals.
    pub num_resident_tokens_left: usize,
}

impl StepPlan {
    pub fn is_empty(&self) -> bool {
        self.decodes.is_empty() && self.chunks.is_empty()
    }

    #[cfg(test)]
    pub fn num_prefill_tokens(&self) -> usize {
        self.chunks.iter().map(|chunk| chunk.num_tokens).sum()
    }
}

/// Plans one step. `running` is oldest first, `waiting` front first.
pub fn plan_step(
    limits: &BatchLimits,
    running: &[RunningView],
    waiting: &[WaitingView],
    num_free_blocks: usize,
) -> StepPlan {
    let mut budget = StepBudget {
        block_size: limits.block_size,
        num_free_blocks,
        num_resident_tokens: running.iter().map(|view| view.num_computed_tokens).sum(),
        max_resident_tokens: limits.max_batch_total_tokens,
        num_prefill_tokens_left: limits.max_batch_prefill_tokens,
    };
    let mut plan = StepPlan::default();
    // running[..num_alive] are not preempted; victims come off the end.
    let mut num_alive = running.len();
    let mut index = 0;
    while index < num_alive {
        let view = &running[index];
        if view.is_decoding {
            plan_decode(view, index, running, &mut num_alive, &mut budget, &mut plan);
        } else {
            plan_running_chunk(view, index, running, &mut num_alive, &mut budget, &mut plan);
        }
        index += 1;
    }
    if plan.preempted_ids.is_empty() {
        let adapters = running[..num_alive].iter().filter_map(|view| view.adapter);
        let mut batch = AdmissionBatch {
            num_alive,
            adapters: adapters.collect(),
        };
        plan_admissions(limits, &mut batch, waiting, &mut budget, &mut plan);
    }
    plan.num_resident_tokens_left = budget
        .max_resident_tokens
        .saturating_sub(budget.num_resident_tokens);
    plan
}

/// Preempts the newest alive running request; false when none is left.
fn preempt_newest(
    running: &[RunningView],
    num_alive: &mut usize,
    budget: &mut StepBudget,
    plan: &mut StepPlan,
) -> bool {
    if *num_alive == 0 {
        return false;
    }
    *num_alive -= 1;
    let victim = &running[*num_alive];
    budget.give_back(victim.num_computed_tokens, victim.num_blocks_released);
    plan.preempted_ids.push(victim.request_id);
    true
}

fn plan_decode(
    view: &RunningView,
    index: usize,
    running: &[RunningView],
    num_alive: &mut usize,
    budget: &mut StepBudget,
    plan: &mut StepPlan,
) {
    // The step computes the K/V of every not-yet-computed token (normally the last sampled
    // one), so the block table must cover the whole sequence.
    let num_step_tokens = view.num_tokens - view.num_computed_tokens;
    let num_new_blocks = budget.new_blocks_needed(view.num_tokens, view.num_blocks_held);
    while !budget.fits(num_step_tokens, num_new_blocks) {
        preempt_newest(running, num_alive, budget, plan);
        if *num_alive <= index {
            return; // the request preempted itself: it was the newest
        }
    }
    budget.take(num_step_tokens, num_new_blocks, false);
    plan.decodes.push(DecodePlan {
        request_id: view.request_id,
        num_new_blocks,
    });
}

fn plan_running_chunk(
    view: &RunningView,
    index: usize,
    running: &[RunningView],
    num_alive: &mut usize,
    budget: &mut StepBudget,
    plan: &mut StepPlan,
) {
    let num_remaining_tokens = view.num_tokens - view.num_computed_tokens;
    if budget.num_prefill_tokens_left == 0 || num_remaining_tokens == 0 {
        return;
    }
    let fit = |budget: &StepBudget| {
        budget.chunk_fit(
            num_remaining_tokens,
            view.num_computed_tokens,
            view.num_blocks_held,
        )
    };
    let mut num_chunk_tokens = fit(budget);
    // Only when not a single token fits, make room by preempting newer requests; the newest
    // prefilling request itself just waits holding its blocks (it is never the only one
    // then, as it fits the cache alone).
    while num_chunk_tokens == 0 && *num_alive > index + 1 {
        preempt_newest(running, num_alive, budget, plan);
        num_chunk_tokens = fit(budget);
    }
    if num_chunk_tokens == 0 {
        return;
    }
    let num_tokens_after = view.num_computed_tokens + num_chunk_tokens;
    let num_new_blocks = budget.new_blocks_needed(num_tokens_after, view.num_blocks_held);
    budget.take(num_chunk_tokens, num_new_blocks, true);
    plan.chunks.push(ChunkPlan {
        request_id: view.request_id,
        num_cached_tokens: view.num_computed_tokens,
        num_tokens: num_chunk_tokens,
        is_last_chunk: num_tokens_after == view.num_tokens,
        num_new_blocks,
    });
}

/// Who is in the step so far, as admission counts it.
struct AdmissionBatch {
    /// Running requests not preempted.
    num_alive: usize,
    /// Distinct LoRA adapters among them and the admitted ones.
    adapters: HashSet<BlockHash>,
}

impl AdmissionBatch {
    /// Whether a request of `adapter` fits beside the adapters already in the step.
    fn has_room_for(&self, adapter: AdapterKey, limits: &BatchLimits) -> bool {
        adapter.is_none_or(|adapter| {
            self.adapters.contains(&adapter) || self.adapters.len() < limits.max_loras_per_batch
        })
    }
}

fn plan_admissions(
    limits: &BatchLimits,
    batch: &mut AdmissionBatch,
    waiting: &[WaitingView],
    budget: &mut StepBudget,
    plan: &mut StepPlan,
) {
    for view in waiting {
        let is_full = batch.num_alive + plan.num_admitted >= limits.max_batch_size;
        if is_full || view.is_waiting_for_prefix || !batch.has_room_for(view.adapter, limits) {
            return; // FIFO: nobody overtakes the front request
        }
        let Some(chunk) = budget.admit(view) else {
            return;
        };
        batch.adapters.extend(view.adapter);
        plan.chunks.push(ChunkPlan {
            request_id: view.request_id,
            num_cached_tokens: view.num_cached_tokens,
            num_tokens: chunk.num_tokens,
            is_last_chunk: view.num_cached_tokens + chunk.num_tokens == view.num_input_tokens,
            num_new_blocks: chunk.num_new_blocks,
        });
        plan.num_admitted += 1;
    }
}

#[cfg(test)]
#[path = "batcher_tests.rs"]
mod tests;
