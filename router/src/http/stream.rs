//! `POST /generate_stream` (and the streamed half of `POST /`): one SSE event per token; the
//! last event also carries `generated_text` and `details`.
//!
//! Failures known before the first token (validation, a full queue, a request the shard
//! refuses at once) are answered with their real status code: the response is only started
//! once the first token is there (DESIGN.md pain point 3), or once `--stream-keep-alive-s`
//! passed without one (a long queue wait): then the stream starts with SSE comments, one per
//! interval without a token, so proxies keep the connection. A failure after the start
//! arrives as a final `{"error", "error_type"}` event. A client that goes away drops the
//! body, hence the event receiver, which cancels the request in the scheduler.

use std::time::Instant;

use async_stream::stream;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use futures::Stream;

use crate::api::error::ErrorResponse;
use crate::api::generate::GenerateRequest;
use crate::api::response::{StreamDetails, StreamResponse, Token};
use crate::error::ApiError;
use crate::generation::{FinishReason, TokenProcessor, TokenStep};
use crate::scheduler::interface::EventReceiver;
use crate::validation::{Delivery, ValidRequest};

use super::deadline::RequestBudget;
use super::generate::{full_text, request_record};
use super::headers::{stream_headers, GenerationTimings};
use super::json::ApiJson;
use super::sse;
use super::state::AppState;

/// Generate a stream of tokens (server-sent events).
#[utoipa::path(
    post,
    path = "/generate_stream",
    tag = "Text Generation Inference",
    request_body = GenerateRequest,
    responses(
        (status = 200, description = "Generated tokens, one `data:` event each", body = StreamResponse,
         content_type = "text/event-stream"),
        (status = 422, description = "Input validation error", body = ErrorResponse),
        (status = 424, description = "Generation error", body = ErrorResponse),
        (status = 429, description = "Model is overloaded", body = ErrorResponse),
    )
)]
pub async fn generate_stream(
    State(state): State<AppState>,
    budget: RequestBudget,
    ApiJson(request): ApiJson<GenerateRequest>,
) -> Result<Response, ApiError> {
    start_stream(state, request, Instant::now(), budget).await
}

/// Everything up to the first token (or the first keep-alive); an error here is an HTTP
/// status.
pub(crate) async fn start_stream(
    state: AppState,
    request: GenerateRequest,
    received_at: Instant,
    budget: RequestBudget,
) -> Result<Response, ApiError> {
    state.metrics().request_received();
    let keep_alive = state.server.stream_keep_alive;
    let started = async {
        let mut valid = state
            .validator
            .validate(request, Delivery::Stream, received_at)
            .await?;
        valid.deadline = budget.deadline(received_at);
        let mut events = state.submitter.submit(valid.generation_request(0))?;
        let mut processor = TokenProcessor::new(
            &state.generation,
            &valid.input_ids,
            valid.stop_sequences.clone(),
            received_at,
        );
        // next_step only awaits the channel, so giving up on it loses no event.
        let first =
            match tokio::time::timeout(keep_alive, next_step(&mut events, &mut processor)).await {
                Ok(step) => Some(step?),
                Err(_) => None,
            };
        Ok::<_, ApiError>((valid, events, processor, first))
    }
    .await;
    let (valid, events, processor, first) = started.map_err(|error| state.request_failed(error))?;
    let headers = stream_headers(&state.compute_type, valid.input_ids.len());
    let run = StreamRun {
        state,
        valid,
        events,
        processor,
    };
    Ok(sse::response(run.into_events(first), headers))
}

/// The next token, skipping events that produce none.
async fn next_step(
    events: &mut EventReceiver,
    processor: &mut TokenProcessor,
) -> Result<TokenStep, ApiError> {
    while let Some(event) = events.recv().await {
        if let Some(step) = processor.process(event)? {
            return Ok(step);
        }
    }
    Err(ApiError::IncompleteGeneration)
}

/// A started stream: owns the event receiver (dropping it cancels the request).
struct StreamRun {
    state: AppState,
    valid: ValidRequest,
    events: EventReceiver,
    processor: TokenProcessor,
}

impl StreamRun {
    /// The stream's bytes: `first` (if it came before the stream started), then every
    /// other token, with a keep-alive comment whenever an interval passes without one.
    fn into_events(
        mut self,
        first: Option<TokenStep>,
    ) -> impl Stream<Item = Bytes> + Send + 'static {
        let keep_alive = self.state.server.stream_keep_alive;
        stream! {
            let mut pending = first;
            loop {
                let step = match pending.take() {
                    Some(step) => step,
                    None => {
                        let next = next_step(&mut self.events, &mut self.processor);
                        match tokio::time::timeout(keep_alive, next).await {
                            Err(_) => {
                                yield sse::keep_alive();
                                continue;
                            }
                            Ok(Ok(step)) => step,
                            Ok(Err(error)) => {
                                let error = self.state.request_failed(error);
                                tracing::warn!(%error, "stream failed after it started");
                                yield sse::json_event(&error.body());
                                break;
                            }
                        }
                    }
                };
                let finish = step.finish;
                yield sse::json_event(&self.stream_response(step));
                if let Some(finish) = finish {
                    self.record_success(finish);
                    break;
                }
            }
        }
    }

    fn stream_response(&self, step: TokenStep) -> StreamResponse {
        let (generated_text, details) = match step.finish {
            None => (None, None),
            Some(finish_reason) => {
                let details = StreamDetails {
                    finish_reason: finish_reason.into(),
                    generated_tokens: self.processor.generated_tokens(),
                    seed: self.valid.seed,
                    input_length: self.valid.input_ids.len() as u32,
                };
                (
                    Some(full_text(&self.valid, self.processor.generated_text())),
                    Some(details),
                )
            }
        };
        StreamResponse {
            index: step.index,
            token: Token::from(step.token),
            top_tokens: step.top_tokens.into_iter().map(Token::from).collect(),
            generated_text,
            details,
        }
    }

    fn record_success(&self, finish: FinishReason) {
        let mut timings = GenerationTimings::new(
            self.valid.received_at.elapsed(),
            self.valid.validation_time,
            self.processor.queue_time(),
        );
        timings.generated_tokens = self.processor.generated_tokens();
        let mut record = request_record(&self.valid, &timings);
        record.time_to_first_token = self.processor.time_to_first_token().unwrap_or_default();
        record.finish_reason = finish.as_str();
        self.state.request_succeeded(&record);
    }
}
