//! `POST /invocations`: Amazon SageMaker's one inference route. As TGI does, the body's shape
//! picks the route: `inputs` -> `/` (generate, or a stream with `stream: true`), `messages` ->
//! `/v1/chat/completions`, `prompt` -> `/v1/completions`; answers and errors are that route's.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::api::error::ErrorResponse;
use crate::api::generate::CompatGenerateRequest;
use crate::api::response::{GenerateResponse, StreamResponse};
use crate::error::ApiError;
use crate::openai::error::OpenAiError;

use super::json::ApiJson;
use super::state::AppState;

/// A chat completions body (OpenAI's); see `/v1/chat/completions`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[allow(dead_code)] // describes the body in the OpenAPI document only
pub struct ChatInvocation {
    #[schema(min_items = 1)]
    pub messages: Vec<crate::api::chat_tokenize::ChatMessageDoc>,
    #[schema(nullable, example = 20)]
    pub max_tokens: Option<u32>,
    #[schema(nullable, default = false)]
    pub stream: Option<bool>,
}

/// A completions body (OpenAI's); see `/v1/completions`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[allow(dead_code)] // describes the body in the OpenAPI document only
pub struct CompletionInvocation {
    #[schema(example = "The capital of France is")]
    pub prompt: String,
    #[schema(nullable, example = 20)]
    pub max_tokens: Option<u32>,
    #[schema(nullable, default = false)]
    pub stream: Option<bool>,
}

/// What SageMaker posts: one of the three bodies.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // describes the body in the OpenAPI document only
pub enum InvocationRequest {
    Generate(CompatGenerateRequest),
    Chat(ChatInvocation),
    Completion(CompletionInvocation),
}

/// Generate text, a chat completion or a completion, chosen by the body (SageMaker).
#[utoipa::path(
    post,
    path = "/invocations",
    tag = "Text Generation Inference",
    request_body = InvocationRequest,
    responses(
        (status = 200, description = "The chosen route's answer: a one-element list of \
         GenerateResponse, a chat.completion or a text_completion object, or their event stream",
         content(
             (Vec<GenerateResponse> = "application/json"),
             (StreamResponse = "text/event-stream"),
         )),
        (status = 400, description = "Malformed JSON", body = ErrorResponse),
        (status = 413, description = "Body too large", body = ErrorResponse),
        (status = 415, description = "Not a JSON body", body = ErrorResponse),
        (status = 422, description = "Input validation error", body = ErrorResponse),
        (status = 424, description = "Generation error", body = ErrorResponse),
        (status = 429, description = "Model is overloaded", body = ErrorResponse),
    )
)]
pub async fn invocations(State(state): State<AppState>, ApiJson(body): ApiJson<Value>) -> Response {
    let has = |key: &str| body.get(key).is_some();
    if has("inputs") {
        match parse::<CompatGenerateRequest>(body) {
            Ok(request) => super::compat::compat_generate(State(state), ApiJson(request))
                .await
                .into_response(),
            Err(message) => invalid(message).into_response(),
        }
    } else if has("messages") {
        match parse(body) {
            Ok(request) => {
                crate::openai::chat::chat_completions(State(state), Ok(Json(request))).await
            }
            Err(message) => OpenAiError::Api(invalid(message)).into_response(),
        }
    } else if has("prompt") {
        match parse(body) {
            Ok(request) => {
                crate::openai::completions::completions(State(state), Ok(Json(request))).await
            }
            Err(message) => OpenAiError::Api(invalid(message)).into_response(),
        }
    } else {
        invalid(
            "the body must be a generate request (`inputs`), a chat completions request \
             (`messages`) or a completions request (`prompt`)"
                .into(),
        )
        .into_response()
    }
}

fn parse<T: DeserializeOwned>(body: Value) -> Result<T, String> {
    serde_json::from_value(body)
        .map_err(|error| format!("Failed to deserialize the JSON body: {error}"))
}

fn invalid(message: String) -> ApiError {
    ApiError::Body {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        message,
    }
}
