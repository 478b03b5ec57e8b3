//! Health as TGI defines it: healthy while generations succeed; after a failure (and before
//! the first check) a real one-token generation must go through the scheduler and the shard
//! before /health answers 200 again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::error::ApiError;
use crate::proto;
use crate::scheduler::interface::{GenerationEvent, GenerationRequest, RequestSubmitter};
use crate::tokenizer::TextTokenizer;

/// The probe's prompt; any short text works.
const PROBE_TEXT: &str = "Hello";

#[derive(Debug)]
pub struct HealthState {
    last_check_ok: AtomicBool,
    probe_input_ids: Vec<u32>,
}

impl HealthState {
    pub fn new(tokenizer: &TextTokenizer) -> Self {
        let probe_input_ids = tokenizer
            .encode(PROBE_TEXT, None)
            .map(|encoding| encoding.get_ids().to_vec())
            .ok()
            .filter(|ids| !ids.is_empty())
            .unwrap_or_else(|| vec![0]);
        Self {
            last_check_ok: AtomicBool::new(false),
            probe_input_ids,
        }
    }

    pub fn mark_failed(&self) {
        self.last_check_ok.store(false, Ordering::Relaxed);
    }

    /// Ok at once while the last check passed; otherwise runs the probe generation. Never ok
    /// while the shards are unreachable (restarting).
    pub async fn check(&self, submitter: &dyn RequestSubmitter) -> Result<(), ApiError> {
        if submitter.stats().shards_unreachable {
            self.mark_failed();
            return Err(ApiError::Unhealthy(
                "the shards are unreachable (restarting); requests wait for them".into(),
            ));
        }
        if self.last_check_ok.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.probe(submitter)
            .await
            .map_err(|error| ApiError::Unhealthy(error.to_string()))?;
        self.last_check_ok.store(true, Ordering::Relaxed);
        Ok(())
    }

    async fn probe(&self, submitter: &dyn RequestSubmitter) -> Result<(), ApiError> {
        let parameters = proto::RequestParameters {
            sampling: Some(proto::SamplingParameters::default()),
            stopping: Some(proto::StoppingParameters {
                max_new_tokens: 1,
                ignore_eos: false,
            }),
            ..Default::default()
        };
        let request = GenerationRequest {
            input_ids: self.probe_input_ids.clone(),
            parameters,
            received_at: Instant::now(),
            deadline: None,
            // Probes are not API requests: no trace of their own.
            span: tracing::Span::none(),
        };
        let mut events = submitter.submit(request)?;
        while let Some(event) = events.recv().await {
            match event {
                GenerationEvent::PrefillDone { .. } => continue,
                GenerationEvent::Token { .. } => return Ok(()),
                GenerationEvent::Error(error) => return Err(error.into()),
            }
        }
        Err(ApiError::IncompleteGeneration)
    }
}
