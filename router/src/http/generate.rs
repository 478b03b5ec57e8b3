//! `POST /generate`: the whole generation in one JSON answer (and the non-streamed half of
//! `POST /`).

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api::error::ErrorResponse;
use crate::api::generate::GenerateRequest;
use crate::api::response::{BestOfSequence, Details, GenerateResponse, PrefillToken, Token};
use crate::error::ApiError;
use crate::generation::{self, BestOf, CompletedGeneration};
use crate::metrics::RequestRecord;
use crate::tokenizer::TextTokenizer;
use crate::validation::{Delivery, ValidRequest};

use super::deadline::RequestBudget;
use super::headers::{generation_headers, GenerationTimings};
use super::json::ApiJson;
use super::state::AppState;

/// Generate tokens.
#[utoipa::path(
    post,
    path = "/generate",
    tag = "Text Generation Inference",
    request_body = GenerateRequest,
    responses(
        (status = 200, description = "Generated text", body = GenerateResponse),
        (status = 422, description = "Input validation error", body = ErrorResponse),
        (status = 424, description = "Generation error", body = ErrorResponse),
        (status = 429, description = "Model is overloaded", body = ErrorResponse),
    )
)]
pub async fn generate(
    State(state): State<AppState>,
    budget: RequestBudget,
    ApiJson(request): ApiJson<GenerateRequest>,
) -> Result<Response, ApiError> {
    let (headers, response) = complete(&state, request, Instant::now(), budget).await?;
    Ok((headers, Json(response)).into_response())
}

/// Validates, generates and records metrics; shared by `/generate` and `POST /`.
pub(crate) async fn complete(
    state: &AppState,
    request: GenerateRequest,
    received_at: Instant,
    budget: RequestBudget,
) -> Result<(HeaderMap, GenerateResponse), ApiError> {
    state.metrics().request_received();
    let input_characters = request.inputs.chars().count();
    let result = async {
        let mut valid = state
            .validator
            .validate(request, Delivery::Complete, received_at)
            .await?;
        valid.deadline = budget.deadline(received_at);
        let outcome =
            generation::generate(state.submitter.as_ref(), &state.generation, &valid).await?;
        Ok::<_, ApiError>((valid, outcome))
    }
    .await;
    let (valid, outcome) = result.map_err(|error| state.request_failed(error))?;

    let mut timings = GenerationTimings::new(
        received_at.elapsed(),
        valid.validation_time,
        outcome.best.queue_time,
    );
    timings.prompt_tokens = valid.input_ids.len();
    timings.generated_tokens = outcome.best.tokens.len() as u32;
    timings.input_characters = input_characters;
    let mut record = request_record(&valid, &timings);
    record.time_to_first_token = outcome.best.time_to_first_token;
    record.finish_reason = outcome.best.finish_reason.as_str();
    state.request_succeeded(&record);
    let headers = generation_headers(&state.compute_type, &timings);
    Ok((headers, to_response(state.tokenizer(), &valid, outcome)))
}

pub(crate) fn request_record(valid: &ValidRequest, timings: &GenerationTimings) -> RequestRecord {
    RequestRecord {
        total: timings.total,
        validation: timings.validation,
        queue: timings.queue,
        inference: timings.inference,
        input_tokens: valid.input_ids.len(),
        generated_tokens: timings.generated_tokens,
        max_new_tokens: valid
            .parameters
            .stopping
            .as_ref()
            .map_or(0, |s| s.max_new_tokens),
        time_to_first_token: Duration::ZERO,
        finish_reason: "",
    }
}

fn to_response(
    tokenizer: &TextTokenizer,
    valid: &ValidRequest,
    outcome: BestOf,
) -> GenerateResponse {
    let BestOf { best, others } = outcome;
    let generated_text = full_text(valid, &best.generated_text);
    if !valid.details {
        return GenerateResponse {
            generated_text,
            details: None,
        };
    }
    let best_of_sequences = (valid.best_of > 1).then(|| {
        others
            .into_iter()
            .map(|candidate| best_of_sequence(tokenizer, valid, candidate))
            .collect()
    });
    let details = Details {
        finish_reason: best.finish_reason.into(),
        generated_tokens: best.tokens.len() as u32,
        seed: best.seed,
        prefill: prefill_tokens(tokenizer, valid, &best.prompt_logprobs),
        tokens: best.tokens.into_iter().map(Token::from).collect(),
        top_tokens: top_tokens(best.top_tokens),
        best_of_sequences,
    };
    GenerateResponse {
        generated_text,
        details: Some(details),
    }
}

fn best_of_sequence(
    tokenizer: &TextTokenizer,
    valid: &ValidRequest,
    candidate: CompletedGeneration,
) -> BestOfSequence {
    BestOfSequence {
        generated_text: full_text(valid, &candidate.generated_text),
        finish_reason: candidate.finish_reason.into(),
        generated_tokens: candidate.tokens.len() as u32,
        seed: candidate.seed,
        prefill: prefill_tokens(tokenizer, valid, &candidate.prompt_logprobs),
        tokens: candidate.tokens.into_iter().map(Token::from).collect(),
        top_tokens: top_tokens(candidate.top_tokens),
    }
}

/// The output text, with the prompt in front when `return_full_text` asked for it.
pub(crate) fn full_text(valid: &ValidRequest, generated_text: &str) -> String {
    if valid.return_full_text {
        format!("{}{generated_text}", valid.inputs)
    } else {
        generated_text.to_string()
    }
}

/// The prompt tokens with their logprobs (`decoder_input_details`), each decoded on its own.
fn prefill_tokens(
    tokenizer: &TextTokenizer,
    valid: &ValidRequest,
    logprobs: &[f32],
) -> Vec<PrefillToken> {
    if !valid.decoder_input_details {
        return Vec::new();
    }
    valid
        .input_ids
        .iter()
        .enumerate()
        .map(|(position, &id)| PrefillToken {
            id,
            text: tokenizer.token_text(id),
            logprob: logprobs.get(position).copied().unwrap_or(f32::NAN),
        })
        .collect()
}

fn top_tokens(per_token: Vec<Vec<crate::generation::TextToken>>) -> Vec<Vec<Token>> {
    per_token
        .into_iter()
        .map(|top| top.into_iter().map(Token::from).collect())
        .collect()
}
