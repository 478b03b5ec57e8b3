//! The scheduler task: take in submitted requests, plan a step, call the shard, dispatch the
//! results; repeat while there is work, and sleep on the command channel when there is none.
//!
//! When a step fails and the shards do not answer a health check either, they are gone (a
//! crashed process, which the launcher restarts): the running requests are requeued with
//! their tokens, and once the shards answer again they are warmed up and the requests
//! replayed, so their clients see a pause, not an error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::Instrument;

use super::prepare::{PreparedStep, StepRequest};
use super::sequence::Sequence;
use super::state::SchedulerState;
use super::stats::{StateGauges, StatsCell, StepRecord};
use crate::proto;
use crate::shard_client::{ShardClient, ShardError, ShardResult};

/// First and longest wait between health checks while the shards are down.
const RECOVERY_POLL_FIRST: Duration = Duration::from_millis(100);
const RECOVERY_POLL_MAX: Duration = Duration::from_secs(2);

pub struct StepLoop<C: ShardClient> {
    client: Arc<C>,
    state: SchedulerState,
    commands: mpsc::UnboundedReceiver<Sequence>,
    stats: Arc<StatsCell>,
    /// Sent again to shards that come back after a crash.
    warmup: proto::WarmupRequest,
}

impl<C: ShardClient> StepLoop<C> {
    pub fn new(
        client: Arc<C>,
        state: SchedulerState,
        commands: mpsc::UnboundedReceiver<Sequence>,
        stats: Arc<StatsCell>,
        warmup: proto::WarmupRequest,
    ) -> Self {
        Self {
            client,
            state,
            commands,
            stats,
            warmup,
        }
    }

    /// Runs until every handle is dropped and the last accepted request is done.
    pub async fn run(mut self) {
        self.publish_gauges();
        let mut is_stalled = false;
        loop {
            // Block on the channel only when there is nothing to step (no busy spinning).
            if self.state.is_idle() || is_stalled {
                match self.commands.recv().await {
                    Some(sequence) => self.state.accept(sequence),
                    None => break,
                }
            }
            while let Ok(sequence) = self.commands.try_recv() {
                self.state.accept(sequence);
            }
            self.state.drop_cancelled_and_expired(Instant::now());
            let plan = self.state.plan();
            if plan.is_empty() {
                // Nothing can run: normally because everything left was cancelled. A
                // non-idle state here would be a planning bug; waiting for the next command
                // (rather than spinning) keeps the process healthy.
                is_stalled = !self.state.is_idle();
                if is_stalled {
                    tracing::error!(num_running = self.state.num_running(), "no step possible");
                }
                self.flush_releases().await;
                self.publish_gauges();
                continue;
            }
            is_stalled = false;
            let step = self.state.prepare(&plan, Instant::now());
            self.run_step(step).await;
            self.publish_gauges();
            // Let HTTP tasks on this runtime run between steps even if the shard answered
            // without ever yielding (in-process fakes do).
            tokio::task::yield_now().await;
        }
        tracing::info!("scheduler stopped: every handle was dropped");
    }

    async fn run_step(&mut self, step: PreparedStep) {
        let started_at = Instant::now();
        let PreparedStep {
            request,
            members,
            num_tokens,
            num_prompt_tokens,
            num_preempted,
            trace,
        } = step;
        let batch_size = members.len();
        let method = request.method();
        let step_span = trace.span(method.as_str(), batch_size, num_tokens);
        let result = match &step_span {
            Some(span) => self.send(request).instrument(span.clone()).await,
            None => self.send(request).await,
        };
        let (forward_ns, sampling_ns) = match &result {
            Ok(proto::StepResponse {
                timings: Some(timings),
                ..
            }) => (timings.forward_ns, timings.sampling_ns),
            _ => (0, 0),
        };
        if let Some(span) = step_span {
            span.record("forward_ns", forward_ns as i64);
            span.record("sampling_ns", sampling_ns as i64);
            // Ends here: applying the results may close the phase span it is a child of.
            drop(span);
        }
        let succeeded = result.is_ok();
        match result {
            Ok(response) => {
                let tally = self.state.complete(&members, response);
                self.stats.record_speculation(&tally);
            }
            Err(error) if self.client.health().await.is_err() => {
                self.recover_shards(&error).await;
            }
            Err(error) => {
                tracing::error!(%error, batch_size, "shard step failed; failing its requests");
                self.state.fail_step(&members, &error);
                if let Err(error) = self.client.clear().await {
                    tracing::error!(%error, "clearing the shard after a failed step failed");
                }
            }
        }
        self.stats.record_step(&StepRecord {
            method,
            succeeded,
            batch_size,
            num_tokens,
            num_prompt_tokens,
            num_preempted,
            forward_ns,
            sampling_ns,
            step_wall_ns: started_at.elapsed().as_nanos() as u64,
        });
    }

    /// Requeues every running request, waits until the shards answer again, warms them up
    /// and lets the loop replay the requests (new ones keep queueing meanwhile).
    async fn recover_shards(&mut self, error: &ShardError) {
        let num_replayed = self.state.requeue_all_for_replay();
        self.stats.set_shards_unreachable(true);
        self.publish_gauges();
        tracing::warn!(%error, num_replayed, "the shards are unreachable: waiting for them to come back");
        let mut delay = RECOVERY_POLL_FIRST;
        loop {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RECOVERY_POLL_MAX);
            // Requests keep arriving and waiting meanwhile, within their deadlines.
            while let Ok(sequence) = self.commands.try_recv() {
                self.state.accept(sequence);
            }
            self.state.drop_cancelled_and_expired(Instant::now());
            self.publish_gauges();
            if self.client.health().await.is_err() {
                continue;
            }
            match self.client.warmup(self.warmup).await {
                Ok(answer) => {
                    self.state.reset_kv_cache(answer.num_blocks as usize);
                    break;
                }
                Err(error) => tracing::warn!(%error, "warming up the restarted shards failed"),
            }
        }
        self.stats.record_recovery(num_replayed);
        tracing::info!(
            num_replayed,
            "the shards are back: replaying the interrupted requests"
        );
    }

    async fn send(&self, request: StepRequest) -> ShardResult<proto::StepResponse> {
        match request {
            StepRequest::Prefill(request) => self.client.prefill(request).await,
            StepRequest::Decode(request) => self.client.decode(request).await,
        }
    }

    /// Tells the shard to forget released requests when no step will carry them soon.
    async fn flush_releases(&mut self) {
        let release_ids = self.state.take_pending_release_ids();
        if release_ids.is_empty() {
            return;
        }
        if let Err(error) = self.client.filter(self.state.running_ids()).await {
            tracing::warn!(%error, "filter failed; releases ride on the next step");
            self.state.restore_pending_release_ids(release_ids);
        }
    }

    fn publish_gauges(&self) {
        self.stats.set_gauges(&StateGauges {
            running_requests: self.state.num_running(),
            kv_blocks_total: self.state.num_total_blocks(),
            kv_blocks_free: self.state.num_free_blocks(),
            kv_blocks_cached: self.state.num_cached_blocks(),
            kv_counters: self.state.kv_counters(),
        });
    }
}
