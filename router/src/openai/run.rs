//! Running a submitted `ChoiceSet` to an answer: collected whole, or streamed as SSE chunks
//! shaped by the endpoint. A stream starts only once its first token is there (or once
//! `--stream-keep-alive-s` passed without one: then with SSE comments, one per quiet
//! interval), so a failure known by then (validation, a full queue, a shard refusing the
//! request) gets its real HTTP status; a failure after that is sent as an OpenAI error event,
//! then `data: [DONE]`.

use std::future::Future;
use std::time::{Duration, Instant};

use async_stream::stream;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::ApiError;
use crate::generation::FinishReason;
use crate::http::{sse, AppState};
use crate::metrics::RequestRecord;

use super::choices::{ChoiceSet, ChoiceUpdate};
use super::error::OpenAiError;
use super::response::Usage;

/// What a request's success record needs besides the choices.
#[derive(Debug, Clone, Copy)]
pub struct RequestTiming {
    pub received_at: Instant,
    pub validation: Duration,
    pub max_new_tokens: u32,
}

/// Turns updates into an endpoint's stream chunks.
pub trait ChunkShaper: Send + 'static {
    type Chunk: Serialize + Send;

    /// The chunks for one update; `prompt_logprobs` are those of the update's choice.
    fn chunks(&mut self, update: &ChoiceUpdate, prompt_logprobs: &[f32]) -> Vec<Self::Chunk>;
    /// The last chunk when `stream_options.include_usage` asked for it.
    fn usage_chunk(&self, usage: Usage) -> Self::Chunk;
}

pub fn usage(set: &ChoiceSet) -> Usage {
    Usage::new(set.prompt_tokens(), set.completion_tokens())
}

/// Every update of every choice, grouped by choice, in order.
pub async fn collect(set: &mut ChoiceSet) -> Result<Vec<Vec<ChoiceUpdate>>, OpenAiError> {
    let mut per_choice = vec![Vec::new(); set.len()];
    while let Some(update) = set.next().await {
        let update = update?;
        per_choice[update.index as usize].push(update);
    }
    Ok(per_choice)
}

/// Waits for the first token, then streams the rest.
pub async fn stream<S: ChunkShaper>(
    state: AppState,
    mut set: ChoiceSet,
    mut shaper: S,
    include_usage: bool,
    timing: RequestTiming,
) -> Result<Response, OpenAiError> {
    let keep_alive = state.server.stream_keep_alive;
    // `next` only polls the choices' channels, so giving up on it loses no event.
    let mut pending = match tokio::time::timeout(keep_alive, set.next()).await {
        Ok(Some(update)) => Some(update?),
        Ok(None) => return Err(ApiError::IncompleteGeneration.into()),
        Err(_) => None,
    };
    let events = stream! {
        loop {
            let update = match pending.take() {
                Some(update) => update,
                None => match tokio::time::timeout(keep_alive, set.next()).await {
                    Err(_) => {
                        yield sse::keep_alive();
                        continue;
                    }
                    Ok(Some(Ok(next))) => next,
                    Ok(Some(Err(error))) => {
                        let error = failed(&state, error);
                        tracing::warn!(%error, "OpenAI stream failed after it started");
                        yield event(&error.body());
                        yield done();
                        return;
                    }
                    Ok(None) => break,
                },
            };
            let prompt_logprobs = set.prompt_logprobs(update.index as usize).to_vec();
            for chunk in shaper.chunks(&update, &prompt_logprobs) {
                yield event(&chunk);
            }
        }
        if include_usage {
            yield event(&shaper.usage_chunk(usage(&set)));
        }
        succeeded(&state, &set, &timing);
        yield done();
    };
    Ok(sse::response(events, HeaderMap::new()))
}

/// One SSE event, framed as OpenAI frames them (`data: ` with a space).
fn event<T: Serialize>(value: &T) -> Bytes {
    match serde_json::to_string(value) {
        Ok(json) => Bytes::from(format!("data: {json}\n\n")),
        Err(error) => Bytes::from(format!(
            "data: {{\"error\": {{\"message\": \"cannot serialize: {error}\"}}}}\n\n"
        )),
    }
}

fn done() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

pub fn succeeded(state: &AppState, set: &ChoiceSet, timing: &RequestTiming) {
    let total = timing.received_at.elapsed();
    let queue = set.queue_time();
    state.request_succeeded(&RequestRecord {
        total,
        validation: timing.validation,
        queue,
        inference: total.saturating_sub(timing.validation + queue),
        input_tokens: set.prompt_tokens() as usize,
        generated_tokens: set.completion_tokens(),
        max_new_tokens: timing.max_new_tokens,
        time_to_first_token: set.time_to_first_token(),
        finish_reason: set.first_finish_reason().map_or("", FinishReason::as_str),
    });
}

/// An endpoint's whole life: the request is counted as received, `handle` runs it, and a
/// failure is counted and answered as an OpenAI error.
pub async fn respond<F, Fut>(state: AppState, handle: F) -> Response
where
    F: FnOnce(AppState, Instant) -> Fut,
    Fut: Future<Output = Result<Response, OpenAiError>>,
{
    let received_at = Instant::now();
    state.metrics().request_received();
    match handle(state.clone(), received_at).await {
        Ok(response) => response,
        Err(error) => failed(&state, error).into_response(),
    }
}

/// Counts the failure (and, for a generation failure, makes the next /health check real).
pub fn failed(state: &AppState, error: OpenAiError) -> OpenAiError {
    match error {
        OpenAiError::Api(error) => OpenAiError::Api(state.request_failed(error)),
        other => {
            state.metrics().request_failed(other.metric_type());
            crate::telemetry::request_log::failed(other.metric_type(), &other);
            other
        }
    }
}
