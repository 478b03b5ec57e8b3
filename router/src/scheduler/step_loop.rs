//! The scheduler task: take in submitted requests, plan a step, call the shard, dispatch the
//! results; repeat while there is work, and sleep on the command channel when there is none.
//!
//! Asynchronous scheduling (`--async-scheduling`, as vLLM v1 does it): the loop sends step n+1
//! as soon as it is planned and only then waits for step n's answer, so the shard starts the
//! next forward the moment it finishes one, while the router applies the last answer,
//! streams it and plans again. Step n+1 is planned on the expected outcome of step n (each
//! request's prompt chunk computed, one pending token each), and the shard appends the tokens
//! it sampled itself (`RunningRequest.append_generated_tokens`). What cannot be planned ahead
//! waits for the answer: a plan that would preempt, and an empty one. A request that step n
//! finishes (EOS) is in step n+1 too; the shard rejects it as unknown and that answer is
//! dropped, so outputs are those of synchronous scheduling.
//!
//! When a step fails and the shards do not answer a health check either, they are gone (a
//! crashed process, which the launcher restarts): the running requests are requeued with
//! their tokens, and once the shards answer again they are warmed up and the requests
//! replayed, so their clients see a pause, not an error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::prepare::{PreparedStep, StepRequest};
use super::sequence::Sequence;
use super::state::{SchedulerState, StepMembers};
use super::stats::{StateGauges, StatsCell, StepRecord};
use crate::metrics::steps::StepMethod;
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
    /// Send the next step before the current one answered.
    is_async: bool,
    /// The number the next step gets (`Step.step_id`).
    next_step_id: u64,
}

/// A step sent to the shards whose answer is not applied yet.
struct SentStep {
    step_id: u64,
    answer: JoinHandle<ShardResult<proto::StepResponse>>,
    members: StepMembers,
    method: StepMethod,
    num_tokens: usize,
    num_prompt_tokens: usize,
    num_preempted: usize,
    /// Sent while the step before it was still in flight.
    was_sent_ahead: bool,
    span: Option<tracing::Span>,
    sent_at: Instant,
}

impl<C: ShardClient> StepLoop<C> {
    pub fn new(
        client: Arc<C>,
        state: SchedulerState,
        commands: mpsc::UnboundedReceiver<Sequence>,
        stats: Arc<StatsCell>,
        warmup: proto::WarmupRequest,
        is_async: bool,
    ) -> Self {
        Self {
            client,
            state,
            commands,
            stats,
            warmup,
            is_async,
            next_step_id: 1,
        }
    }

    /// Runs until every handle is dropped and the last accepted request is done.
    pub async fn run(mut self) {
        self.publish_gauges();
        let mut is_stalled = false;
        // With asynchronous scheduling: the step whose answer is still to come.
        let mut in_flight: Option<SentStep> = None;
        loop {
            // Block on the channel only when there is nothing to step (no busy spinning).
            if in_flight.is_none() && (self.state.is_idle() || is_stalled) {
                self.flush_releases().await;
                self.publish_gauges();
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
            if plan.is_empty() || !plan.preempted_ids.is_empty() {
                if let Some(previous) = in_flight.take() {
                    // Preempting a request whose token is still being generated, or waiting
                    // with an answer pending: both wait for that answer and plan again.
                    self.finish(previous, None).await;
                    self.publish_gauges();
                    continue;
                }
            }
            if plan.is_empty() {
                // Nothing can run: normally because everything left was cancelled. A
                // non-idle state here would be a planning bug; waiting for the next command
                // (rather than spinning) keeps the process healthy. Releases go out with a
                // Filter before that wait (top of the loop).
                is_stalled = !self.state.is_idle();
                if is_stalled {
                    tracing::error!(num_running = self.state.num_running(), "no step possible");
                }
                continue;
            }
            is_stalled = false;
            let step = self.state.prepare(&plan, Instant::now());
            let sent = self.send(step, in_flight.as_ref().map(|previous| previous.step_id));
            in_flight = match in_flight.take() {
                // Sent ahead: the previous answer is applied while this step runs.
                Some(previous) => self.finish(previous, Some(sent)).await,
                None if self.is_async => Some(sent),
                None => self.finish(sent, None).await,
            };
            self.publish_gauges();
            // Let HTTP tasks on this runtime run between steps even if the shard answered
            // without ever yielding (in-process fakes do).
            tokio::task::yield_now().await;
        }
        tracing::info!("scheduler stopped: every handle was dropped");
    }

    /// Sends `step` on its own task (numbered; to run after `after_step_id` when that one
    /// has not answered yet) and returns at once.
    fn send(&mut self, step: PreparedStep, after_step_id: Option<u64>) -> SentStep {
        let PreparedStep {
            mut request,
            members,
            num_tokens,
            num_prompt_tokens,
            num_preempted,
            trace,
        } = step;
        let step_id = self.next_step_id;
        self.next_step_id += 1;
        request.number(step_id, after_step_id.unwrap_or(0));
        let method = request.method();
        let span = trace.span(method.as_str(), members.len(), num_tokens);
        let client = Arc::clone(&self.client);
        let call = async move {
            match request {
                StepRequest::Prefill(request) => client.prefill(request).await,
                StepRequest::Decode(request) => client.decode(request).await,
            }
        };
        let answer = match &span {
            Some(span) => tokio::spawn(call.instrument(span.clone())),
            None => tokio::spawn(call),
        };
        SentStep {
            step_id,
            answer,
            members,
            method,
            num_tokens,
            num_prompt_tokens,
            num_preempted,
            was_sent_ahead: after_step_id.is_some(),
            span,
            sent_at: Instant::now(),
        }
    }

    /// Waits for `step`'s answer and applies it. `behind` is the step sent after it, still
    /// in flight: returned for its own turn when `step` succeeded; when `step` failed, its
    /// answer (computed on a shard state the failure broke, or not at all) is awaited and
    /// dropped, and the failure handled as if it had never been sent.
    async fn finish(&mut self, step: SentStep, behind: Option<SentStep>) -> Option<SentStep> {
        let result = match step.answer.await {
            Ok(result) => result,
            Err(error) => Err(ShardError::Transport(format!(
                "the step's task ended: {error}"
            ))),
        };
        let (forward_ns, sampling_ns) = match &result {
            Ok(proto::StepResponse {
                timings: Some(timings),
                ..
            }) => (timings.forward_ns, timings.sampling_ns),
            _ => (0, 0),
        };
        if let Some(span) = step.span {
            span.record("forward_ns", forward_ns as i64);
            span.record("sampling_ns", sampling_ns as i64);
            // Ends here: applying the results may close the phase span it is a child of.
            drop(span);
        }
        let succeeded = result.is_ok();
        let batch_size = step.members.len();
        let mut behind = behind;
        match result {
            Ok(response) => {
                let tally = self.state.complete(&step.members, response);
                self.stats.record_speculation(&tally);
            }
            Err(error) => {
                if let Some(behind) = behind.take() {
                    let _ = behind.answer.await;
                }
                if self.client.health().await.is_err() {
                    self.recover_shards(&error).await;
                } else {
                    tracing::error!(%error, batch_size, "shard step failed; failing its requests");
                    self.state.fail_step(&step.members, &error);
                    if let Err(error) = self.client.clear().await {
                        tracing::error!(%error, "clearing the shard after a failed step failed");
                    }
                }
            }
        }
        self.stats.record_step(&StepRecord {
            method: step.method,
            succeeded,
            batch_size,
            num_tokens: step.num_tokens,
            num_prompt_tokens: step.num_prompt_tokens,
            num_preempted: step.num_preempted,
            was_sent_ahead: step.was_sent_ahead,
            forward_ns,
            sampling_ns,
            step_wall_ns: step.sent_at.elapsed().as_nanos() as u64,
        });
        behind
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
