//! `POST /chat_tokenize`: what `/v1/chat/completions` would send the model for these
//! messages (and tools), as text and as tokens (TGI's route and response shape).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use crate::api::chat_tokenize::ChatTokenizeResponse;
use crate::api::error::ErrorResponse;
use crate::api::tokenize::SimpleToken;
use crate::error::ApiError;
use crate::openai::error::OpenAiError;
use crate::openai::prompt::{render_chat, Conversation};
use crate::openai::request::ChatCompletionRequest;
use crate::openai::tools::check_tools;

use super::json::ApiJson;
use super::state::AppState;

/// Apply the chat template to the messages and tokenize the result.
#[utoipa::path(
    post,
    path = "/chat_tokenize",
    tag = "Text Generation Inference",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "Templated and tokenized chat", body = ChatTokenizeResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 415, description = "Not a JSON body", body = ErrorResponse),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 422, description = "Input validation error", body = ErrorResponse),
    )
)]
pub async fn chat_tokenize(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ChatCompletionRequest>,
) -> Result<Json<ChatTokenizeResponse>, ApiError> {
    let in_tgi_shape = |error: OpenAiError| ApiError::Body {
        // TGI answers every refused input with 422 (OpenAI's routes use 400).
        status: match error.status() {
            StatusCode::BAD_REQUEST => StatusCode::UNPROCESSABLE_ENTITY,
            status => status,
        },
        message: error.to_string(),
    };
    let template = state.openai.chat_template().map_err(in_tgi_shape)?;
    let conversation = Conversation {
        tools: check_tools(request.tools.as_ref(), request.tool_choice.as_ref())
            .map_err(in_tgi_shape)?,
        messages: request.messages,
        tool_prompt: request.tool_prompt,
    };
    let tokenizer = Arc::clone(&state.generation.tokenizer);
    let work = move || -> Result<ChatTokenizeResponse, ApiError> {
        let text = render_chat(&template, conversation).map_err(in_tgi_shape)?;
        let encoding = tokenizer
            .inner()
            .encode(text.as_str(), false)
            .map_err(|error| ApiError::Body {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message: format!("tokenizer error: {error}"),
            })?;
        let tokenize_response = encoding
            .get_ids()
            .iter()
            .zip(encoding.get_offsets())
            .map(|(&id, &(start, stop))| SimpleToken {
                id,
                text: text.get(start..stop).unwrap_or_default().to_string(),
                start,
                stop,
            })
            .collect();
        Ok(ChatTokenizeResponse {
            tokenize_response,
            templated_text: text,
        })
    };
    let response = tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| ApiError::Internal(format!("tokenizer task failed: {error}")))??;
    Ok(Json(response))
}
