//! Non-streamed generation: run a request to its last token, or run `best_of` sampled
//! candidates side by side and keep the one with the best mean logprob.

use std::time::Duration;

use futures::future::join_all;

use crate::error::ApiError;
use crate::scheduler::interface::{EventReceiver, RequestSubmitter};
use crate::validation::ValidRequest;

use super::{FinishReason, GenerationContext, TextToken, TokenProcessor};

/// One candidate's whole output.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletedGeneration {
    pub generated_text: String,
    pub finish_reason: FinishReason,
    pub tokens: Vec<TextToken>,
    /// Per token, its alternatives (empty lists when `top_n_tokens` was 0).
    pub top_tokens: Vec<Vec<TextToken>>,
    /// Aligned with the input ids when asked for (NaN for the first), else empty.
    pub prompt_logprobs: Vec<f32>,
    pub seed: Option<u64>,
    pub queue_time: Duration,
    pub time_to_first_token: Duration,
}

impl CompletedGeneration {
    /// Mean logprob of the generated tokens, the `best_of` criterion.
    pub fn mean_logprob(&self) -> f32 {
        if self.tokens.is_empty() {
            return f32::NEG_INFINITY;
        }
        let total: f32 = self.tokens.iter().map(|token| token.logprob).sum();
        total / self.tokens.len() as f32
    }
}

/// The chosen candidate and the others, in submission order.
#[derive(Debug, Clone)]
pub struct BestOf {
    pub best: CompletedGeneration,
    pub others: Vec<CompletedGeneration>,
}

/// Submits the request (`best_of` candidates with distinct seeds) and waits for all of them.
/// A refused submission cancels the candidates already queued (their receivers drop).
pub async fn generate(
    submitter: &dyn RequestSubmitter,
    context: &GenerationContext,
    request: &ValidRequest,
) -> Result<BestOf, ApiError> {
    let receivers = (0..request.best_of)
        .map(|index| submitter.submit(request.generation_request(index)))
        .collect::<Result<Vec<_>, _>>()?;
    let runs = receivers.into_iter().enumerate().map(|(index, events)| {
        let processor = TokenProcessor::new(
            context,
            &request.input_ids,
            request.stop_sequences.clone(),
            request.received_at,
        );
        run_to_completion(events, processor, request.candidate_seed(index))
    });
    let mut candidates = join_all(runs)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let best_index = candidates
        .iter()
        .enumerate()
        .max_by(|(_, a), (_, b)| a.mean_logprob().total_cmp(&b.mean_logprob()))
        .map(|(index, _)| index)
        .ok_or_else(|| ApiError::Internal("best_of produced no candidate".into()))?;
    let best = candidates.remove(best_index);
    Ok(BestOf {
        best,
        others: candidates,
    })
}

/// Consumes events until the last token; dropping `events` on return cancels a request that a
/// stop sequence ended before the shard did.
pub async fn run_to_completion(
    mut events: EventReceiver,
    mut processor: TokenProcessor,
    seed: Option<u64>,
) -> Result<CompletedGeneration, ApiError> {
    let mut tokens = Vec::new();
    let mut top_tokens = Vec::new();
    while let Some(event) = events.recv().await {
        let Some(step) = processor.process(event)? else {
            continue;
        };
        tokens.push(step.token);
        top_tokens.push(step.top_tokens);
        if let Some(finish_reason) = step.finish {
            let has_top_tokens = top_tokens
                .iter()
                .any(|top: &Vec<TextToken>| !top.is_empty());
            return Ok(CompletedGeneration {
                generated_text: processor.generated_text().to_string(),
                finish_reason,
                tokens,
                top_tokens: if has_top_tokens {
                    top_tokens
                } else {
                    Vec::new()
                },
                prompt_logprobs: processor.prompt_logprobs().to_vec(),
                seed,
                queue_time: processor.queue_time(),
                time_to_first_token: processor.time_to_first_token().unwrap_or_default(),
            });
        }
    }
    Err(ApiError::IncompleteGeneration)
}
