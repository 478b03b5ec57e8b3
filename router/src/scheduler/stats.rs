//! The scheduler's published statistics: written by the scheduler task once per step, read by
//! `/metrics` and `/info` through the handle.

use std::sync::{Mutex, MutexGuard};

use super::interface::SchedulerStats;
use super::kv_cache_manager::KvCacheCounters;
use super::queue::WaitingGate;
use crate::metrics::histogram::{Histogram, COUNT_BOUNDS};
use crate::metrics::steps::{StepMethod, StepMetrics, StepObservation};

/// What one step adds to the running totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepRecord {
    pub method: StepMethod,
    pub succeeded: bool,
    pub batch_size: usize,
    pub num_tokens: usize,
    /// Of num_tokens, those of prompt chunks.
    pub num_prompt_tokens: usize,
    pub num_preempted: usize,
    /// Sent before the step ahead of it had answered.
    pub was_sent_ahead: bool,
    pub forward_ns: u64,
    pub sampling_ns: u64,
    pub step_wall_ns: u64,
}

/// What the decodes of one step that verified speculative proposals did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpeculationTally {
    /// Per decode with proposals: (proposed, accepted) tokens.
    pub decodes: Vec<(u32, u32)>,
}

/// Gauges read from the scheduler state after a step (or after an idle turn).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateGauges {
    pub running_requests: usize,
    pub kv_blocks_total: usize,
    pub kv_blocks_free: usize,
    pub kv_blocks_cached: usize,
    pub kv_counters: KvCacheCounters,
}

#[derive(Debug)]
pub struct StatsCell {
    stats: Mutex<SchedulerStats>,
    /// Histograms lock on their own: observing one never waits on a snapshot of the rest.
    steps: StepMetrics,
    accepted_per_decode: Histogram,
}

impl Default for StatsCell {
    fn default() -> Self {
        Self {
            stats: Mutex::default(),
            steps: StepMetrics::default(),
            accepted_per_decode: Histogram::new(COUNT_BOUNDS),
        }
    }
}

impl StatsCell {
    fn lock(&self) -> MutexGuard<'_, SchedulerStats> {
        // A poisoned lock only means a panic elsewhere mid-update; the numbers stay usable.
        self.stats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn record_step(&self, record: &StepRecord) {
        self.steps.observe(&StepObservation {
            method: record.method,
            succeeded: record.succeeded,
            batch_size: record.batch_size,
            num_tokens: record.num_tokens,
            step_wall_ns: record.step_wall_ns,
            forward_ns: record.forward_ns,
            sampling_ns: record.sampling_ns,
        });
        let mut stats = self.lock();
        stats.steps_total += 1;
        stats.last_batch_size = record.batch_size;
        stats.last_batch_tokens = record.num_tokens;
        stats.preemptions_total += record.num_preempted as u64;
        stats.steps_sent_ahead_total += u64::from(record.was_sent_ahead);
        stats.prompt_tokens_computed_total += record.num_prompt_tokens as u64;
        stats.forward_ns_total += record.forward_ns;
        stats.step_wall_ns_total += record.step_wall_ns;
    }

    pub fn record_speculation(&self, tally: &SpeculationTally) {
        if tally.decodes.is_empty() {
            return;
        }
        for &(_, num_accepted) in &tally.decodes {
            self.accepted_per_decode.observe(f64::from(num_accepted));
        }
        let mut stats = self.lock();
        for &(num_proposed, num_accepted) in &tally.decodes {
            stats.speculative_proposed_tokens_total += u64::from(num_proposed);
            stats.speculative_accepted_tokens_total += u64::from(num_accepted);
        }
    }

    pub fn set_gauges(&self, gauges: &StateGauges) {
        let mut stats = self.lock();
        stats.running_requests = gauges.running_requests;
        stats.kv_blocks_total = gauges.kv_blocks_total;
        stats.kv_blocks_free = gauges.kv_blocks_free;
        stats.kv_blocks_cached = gauges.kv_blocks_cached;
        stats.prefix_cache_query_tokens_total = gauges.kv_counters.prefix_query_tokens;
        stats.prefix_cache_hit_tokens_total = gauges.kv_counters.prefix_hit_tokens;
        stats.prefix_cache_evicted_blocks_total = gauges.kv_counters.evicted_blocks;
    }

    /// The shards became unreachable (true) or came back after replaying `num_replayed`.
    pub fn set_shards_unreachable(&self, is_unreachable: bool) {
        self.lock().shards_unreachable = is_unreachable;
    }

    pub fn record_recovery(&self, num_replayed: usize) {
        let mut stats = self.lock();
        stats.shards_unreachable = false;
        stats.shard_recoveries_total += 1;
        stats.replayed_requests_total += num_replayed as u64;
    }

    /// A snapshot; the waiting count is read live from the gate.
    pub fn snapshot(&self, gate: &WaitingGate) -> SchedulerStats {
        let mut stats = self.lock().clone();
        stats.waiting_requests = gate.num_waiting();
        stats.steps = self.steps.snapshot();
        stats.speculative_accepted_per_decode = self.accepted_per_decode.snapshot();
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_accumulate_and_gauges_overwrite() {
        let cell = StatsCell::default();
        let gate = WaitingGate::new(4);
        gate.try_reserve().expect("room");
        cell.set_gauges(&StateGauges {
            running_requests: 2,
            kv_blocks_total: 10,
            kv_blocks_free: 7,
            kv_blocks_cached: 3,
            kv_counters: KvCacheCounters {
                prefix_query_tokens: 40,
                prefix_hit_tokens: 16,
                evicted_blocks: 2,
            },
        });
        let step = StepRecord {
            method: StepMethod::Prefill,
            succeeded: true,
            batch_size: 2,
            num_tokens: 9,
            num_prompt_tokens: 8,
            num_preempted: 1,
            was_sent_ahead: false,
            forward_ns: 100,
            sampling_ns: 10,
            step_wall_ns: 150,
        };
        cell.record_step(&step);
        cell.record_step(&StepRecord {
            method: StepMethod::Decode,
            batch_size: 1,
            num_tokens: 1,
            num_prompt_tokens: 0,
            was_sent_ahead: true,
            ..step
        });
        let stats = cell.snapshot(&gate);
        assert_eq!(stats.steps_total, 2);
        assert_eq!((stats.last_batch_size, stats.last_batch_tokens), (1, 1));
        assert_eq!(stats.preemptions_total, 2);
        assert_eq!(stats.steps_sent_ahead_total, 1);
        assert_eq!(
            (stats.forward_ns_total, stats.step_wall_ns_total),
            (200, 300)
        );
        assert_eq!(
            (
                stats.running_requests,
                stats.kv_blocks_free,
                stats.kv_blocks_total
            ),
            (2, 7, 10)
        );
        assert_eq!(stats.waiting_requests, 1);
        assert_eq!(stats.prompt_tokens_computed_total, 8);
        assert_eq!(stats.kv_blocks_cached, 3);
        assert_eq!(
            (
                stats.prefix_cache_query_tokens_total,
                stats.prefix_cache_hit_tokens_total,
                stats.prefix_cache_evicted_blocks_total
            ),
            (40, 16, 2)
        );
        for method in StepMethod::ALL {
            assert_eq!(stats.steps.method(method).num_steps, 1);
        }
        assert_eq!(stats.steps.method(StepMethod::Prefill).tokens.sum, 9.0);
    }

    #[test]
    fn speculation_counts_proposed_and_accepted_tokens() {
        let cell = StatsCell::default();
        cell.record_speculation(&SpeculationTally {
            decodes: vec![(3, 0), (3, 3), (2, 1)],
        });
        cell.record_speculation(&SpeculationTally::default());
        let stats = cell.snapshot(&WaitingGate::new(1));
        assert_eq!(
            (
                stats.speculative_proposed_tokens_total,
                stats.speculative_accepted_tokens_total
            ),
            (8, 4)
        );
        let histogram = &stats.speculative_accepted_per_decode;
        assert_eq!((histogram.count, histogram.sum), (3, 4.0));
        // Cumulative: one decode accepted 0, two accepted at most 1.
        assert_eq!(&histogram.buckets[..2], &[(0.0, 1), (1.0, 2)]);
    }
}
