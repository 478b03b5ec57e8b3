//! `POST /`: the route TGI's Python clients post to. `stream: true` answers like
//! `/generate_stream`; otherwise like `/generate`, wrapped in a one-element list.

use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api::error::ErrorResponse;
use crate::api::generate::CompatGenerateRequest;
use crate::api::response::{GenerateResponse, StreamResponse};
use crate::error::ApiError;

use super::deadline::RequestBudget;
use super::generate::complete;
use super::json::ApiJson;
use super::state::AppState;
use super::stream::start_stream;

/// Generate tokens if `stream == false` or a stream of tokens if `stream == true`.
#[utoipa::path(
    post,
    path = "/",
    tag = "Text Generation Inference",
    request_body = CompatGenerateRequest,
    responses(
        (status = 200, description = "Generated text (a one-element list)", body = Vec<GenerateResponse>),
        (status = 200, description = "Generated tokens (stream)", body = StreamResponse,
         content_type = "text/event-stream"),
        (status = 422, description = "Input validation error", body = ErrorResponse),
        (status = 424, description = "Generation error", body = ErrorResponse),
        (status = 429, description = "Model is overloaded", body = ErrorResponse),
    )
)]
pub async fn compat_generate(
    State(state): State<AppState>,
    budget: RequestBudget,
    ApiJson(request): ApiJson<CompatGenerateRequest>,
) -> Result<Response, ApiError> {
    let received_at = Instant::now();
    if request.stream {
        return start_stream(state, request.into(), received_at, budget).await;
    }
    let (headers, response) = complete(&state, request.into(), received_at, budget).await?;
    Ok((headers, Json(vec![response])).into_response())
}
