//! Admission queue, continuous-batching loop, token budgets, the KV cache manager (block
//! tables, prefix cache), preemption.
//!
//! `spawn_scheduler` starts the scheduler task and returns its `SchedulerHandle` (the
//! `RequestSubmitter` the HTTP layer uses).
mod batcher;
mod budget;
pub mod fake_shard;
mod handle;
pub mod interface;
mod kv_cache_manager;
mod plan_views;
mod prepare;
mod queue;
mod sequence;
mod state;
mod stats;
mod step_loop;

#[cfg(test)]
mod scheduler_tests;

use std::sync::Arc;

use tokio::sync::mpsc;

pub use handle::SchedulerHandle;
use interface::SchedulerConfig;
use kv_cache_manager::KvCacheManager;
use queue::WaitingGate;
use state::SchedulerState;
use stats::StatsCell;
use step_loop::StepLoop;

use crate::shard_client::ShardClient;

/// Starts the scheduler on the current tokio runtime (must be called inside one). Zero
/// `block_size`, `max_batch_prefill_tokens` or `max_batch_size` would make no step possible,
/// so they are raised to one (with a warning).
pub fn spawn_scheduler<C: ShardClient>(client: Arc<C>, config: SchedulerConfig) -> SchedulerHandle {
    let config = clamp_config(config);
    let gate = Arc::new(WaitingGate::new(config.max_waiting_requests));
    let stats = Arc::new(StatsCell::default());
    let (commands, command_receiver) = mpsc::unbounded_channel();
    let kv = KvCacheManager::new(config.num_blocks, config.block_size, config.prefix_caching);
    let state = SchedulerState::new(budget::BatchLimits::from_config(&config), kv, gate.clone());
    let step_loop = StepLoop::new(
        client,
        state,
        command_receiver,
        stats.clone(),
        config.warmup_request(),
        // A verify step's token count is known only when it ends: nothing to plan ahead on.
        config.async_scheduling && config.num_speculative_tokens == 0,
    );
    tokio::spawn(step_loop.run());
    SchedulerHandle::new(commands, gate, stats, config)
}

fn clamp_config(mut config: SchedulerConfig) -> SchedulerConfig {
    for (name, value) in [
        ("block_size", &mut config.block_size),
        (
            "max_batch_prefill_tokens",
            &mut config.max_batch_prefill_tokens,
        ),
        ("max_batch_size", &mut config.max_batch_size),
    ] {
        if *value == 0 {
            tracing::warn!(name, "scheduler limit is 0; using 1");
            *value = 1;
        }
    }
    config
}
