//! `POST /invocations`: Amazon SageMaker's one inference route. As TGI does, the body's shape
//! picks the route: `inputs` -> `/` (generate, or a stream with `stream: true`), `messages` ->
//! `/v1/chat/completions`, `prompt` -> `/v1/completions`; answers and errors are that route's.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::api::error::ErrorResponse;
use crate::api::generate::CompatGenerateRequest;
use crate::api::response::{GenerateResponse, StreamResponse};
use crate::error::ApiError;
use crate::openai::error::{ErrorBody, OpenAiError};
use crate::openai::request::{ChatCompletionRequest, CompletionRequest};
use crate::openai::response::{ChatCompletion, ChatCompletionChunk, Completion};

use super::deadline::RequestBudget;
use super::json::ApiJson;
use super::state::AppState;

/// What SageMaker posts: one of the three bodies (chosen by `inputs`, `messages`, `prompt`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // describes the body in the OpenAPI document only
#[allow(clippy::large_enum_variant)] // never built, so its size costs nothing
pub enum InvocationRequest {
    Generate(CompatGenerateRequest),
    Chat(ChatCompletionRequest),
    Completion(CompletionRequest),
}

/// The chosen route's answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // describes the answer in the OpenAPI document only
pub enum InvocationResponse {
    Generate(Vec<GenerateResponse>),
    Chat(ChatCompletion),
    Completion(Completion),
}

/// One event of the chosen route's stream.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // describes the answer in the OpenAPI document only
pub enum InvocationChunk {
    Generate(StreamResponse),
    Chat(ChatCompletionChunk),
    Completion(Completion),
}

/// A refusal in the chosen route's shape: TGI's for `inputs`, OpenAI's for the others.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // describes the answer in the OpenAPI document only
pub enum InvocationError {
    Tgi(ErrorResponse),
    OpenAi(ErrorBody),
}

/// Generate text, a chat completion or a completion, chosen by the body (SageMaker).
#[utoipa::path(
    post,
    path = "/invocations",
    tag = "Text Generation Inference",
    request_body = InvocationRequest,
    params(("x-request-timeout-s" = Option<f64>, Header, description = "Ask for a shorter time limit than the server's")),
    responses(
        (status = 200, description = "The chosen route's answer: a one-element list of \
         GenerateResponse, a chat.completion or a text_completion object, or their event stream",
         content(
             (InvocationResponse = "application/json"),
             (InvocationChunk = "text/event-stream"),
         )),
        (status = 400, description = "Malformed JSON, or an invalid OpenAI parameter", body = InvocationError),
        (status = 408, description = "Timed out while queued", body = InvocationError),
        (status = 413, description = "Body too large", body = InvocationError),
        (status = 415, description = "Not a JSON body", body = InvocationError),
        (status = 422, description = "Input validation error", body = InvocationError),
        (status = 424, description = "Generation error", body = InvocationError),
        (status = 429, description = "Model is overloaded", body = InvocationError),
        (status = 504, description = "Timed out while generating", body = InvocationError),
    )
)]
pub async fn invocations(
    State(state): State<AppState>,
    budget: Result<RequestBudget, ApiError>,
    ApiJson(body): ApiJson<Value>,
) -> Response {
    let has = |key: &str| body.get(key).is_some();
    if has("inputs") {
        let budget = match budget {
            Ok(budget) => budget,
            Err(error) => return error.into_response(),
        };
        match parse::<CompatGenerateRequest>(body) {
            Ok(request) => super::compat::compat_generate(State(state), budget, ApiJson(request))
                .await
                .into_response(),
            Err(message) => invalid(message).into_response(),
        }
    } else if has("messages") {
        match parse(body) {
            Ok(request) => {
                crate::openai::chat::chat_completions(State(state), budget, Ok(Json(request))).await
            }
            Err(message) => OpenAiError::Api(invalid(message)).into_response(),
        }
    } else if has("prompt") {
        match parse(body) {
            Ok(request) => {
                crate::openai::completions::completions(State(state), budget, Ok(Json(request)))
                    .await
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
