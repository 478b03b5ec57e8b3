//! The HTTP layer's handle on the scheduler task: admission checks that must answer at once
//! (queue bound, requests that can never fit) happen here, on the caller's task.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::budget::check_fits_cache;
use super::interface::{
    AdmissionError, EventReceiver, GenerationError, GenerationEvent, GenerationRequest,
    RequestSubmitter, SchedulerConfig, SchedulerStats,
};
use super::queue::WaitingGate;
use super::sequence::Sequence;
use super::stats::StatsCell;

/// Cheap to clone; every clone feeds the same scheduler task. The task stops once every
/// handle is dropped and the accepted requests are done.
#[derive(Debug, Clone)]
pub struct SchedulerHandle {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    commands: mpsc::UnboundedSender<Sequence>,
    gate: Arc<WaitingGate>,
    stats: Arc<StatsCell>,
    next_request_id: AtomicU64,
    config: SchedulerConfig,
}

impl SchedulerHandle {
    pub(super) fn new(
        commands: mpsc::UnboundedSender<Sequence>,
        gate: Arc<WaitingGate>,
        stats: Arc<StatsCell>,
        config: SchedulerConfig,
    ) -> Self {
        let shared = Shared {
            commands,
            gate,
            stats,
            next_request_id: AtomicU64::new(0),
            config,
        };
        Self {
            shared: Arc::new(shared),
        }
    }

    /// The limits the scheduler runs with (after clamping zero values to one).
    pub fn config(&self) -> &SchedulerConfig {
        &self.shared.config
    }
}

impl RequestSubmitter for SchedulerHandle {
    fn submit(&self, request: GenerationRequest) -> Result<EventReceiver, AdmissionError> {
        let (events, receiver) = mpsc::unbounded_channel();
        let max_new_tokens = request
            .parameters
            .stopping
            .as_ref()
            .map_or(0, |stopping| stopping.max_new_tokens);
        let refusal = if request.input_ids.is_empty() {
            Some(GenerationError::Shard(
                "the request has no input tokens".to_string(),
            ))
        } else {
            check_fits_cache(
                request.input_ids.len(),
                max_new_tokens as usize,
                &self.shared.config,
            )
            .err()
        };
        if let Some(error) = refusal {
            // Waiting would never help: fail now, as the request's first and only event.
            let _ = events.send(GenerationEvent::Error(error));
            return Ok(receiver);
        }
        self.shared.gate.try_reserve()?;
        let request_id = self.shared.next_request_id.fetch_add(1, Ordering::Relaxed);
        if self
            .shared
            .commands
            .send(Sequence::new(request_id, request, events))
            .is_err()
        {
            self.shared.gate.release();
            return Err(AdmissionError::Stopped);
        }
        Ok(receiver)
    }

    fn stats(&self) -> SchedulerStats {
        self.shared.stats.snapshot(&self.shared.gate)
    }
}
