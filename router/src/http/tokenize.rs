//! `POST /tokenize`: the ids the router would send to the shard, with their spans in the text.

use axum::extract::State;
use axum::Json;

use crate::api::error::ErrorResponse;
use crate::api::generate::GenerateRequest;
use crate::api::tokenize::SimpleToken;
use crate::error::ApiError;

use super::json::ApiJson;
use super::state::AppState;

/// Tokenize the inputs (with the special tokens the model adds, and `truncate` applied).
#[utoipa::path(
    post,
    path = "/tokenize",
    tag = "Text Generation Inference",
    request_body = GenerateRequest,
    responses(
        (status = 200, description = "Tokenized ids", body = Vec<SimpleToken>),
        (status = 422, description = "Input validation error", body = ErrorResponse),
    )
)]
pub async fn tokenize(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<GenerateRequest>,
) -> Result<Json<Vec<SimpleToken>>, ApiError> {
    let truncate = request.parameters.truncate;
    let encoding = state
        .validator
        .tokenize(request.inputs.clone(), truncate)
        .await?;
    let tokens = encoding
        .get_ids()
        .iter()
        .zip(encoding.get_offsets())
        .map(|(&id, &(start, stop))| SimpleToken {
            id,
            text: request
                .inputs
                .get(start..stop)
                .unwrap_or_default()
                .to_string(),
            start,
            stop,
        })
        .collect();
    Ok(Json(tokens))
}
