//! `GET /v1/models` and `GET /v1/models/{id}`: the base model this server serves, then each
//! LoRA adapter it serves beside it (a `model` a request may name).

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::http::AppState;

use super::error::{ErrorBody, OpenAiError};
use super::response::{ModelCard, ModelList};

/// The served model and its LoRA adapters, as OpenAI lists models.
#[utoipa::path(get, path = "/v1/models", tag = "OpenAI",
    responses((status = 200, description = "The served model and adapters", body = ModelList)))]
pub async fn list_models(State(state): State<AppState>) -> Json<ModelList> {
    let names = std::iter::once(&state.info.model_id).chain(&state.info.lora_adapters);
    Json(ModelList {
        object: "list",
        data: names.map(|name| model_card(&state, name)).collect(),
    })
}

/// The served model or one of its adapters by name; 404 for any other name.
#[utoipa::path(get, path = "/v1/models/{model_id}", tag = "OpenAI",
    params(("model_id" = String, Path, description = "The model's or an adapter's name")),
    responses(
        (status = 200, description = "The served model or adapter", body = ModelCard),
        (status = 404, description = "Neither the served model nor an adapter", body = ErrorBody),
    ))]
pub async fn get_model(State(state): State<AppState>, Path(model_id): Path<String>) -> Response {
    if model_id == state.info.model_id || state.info.lora_adapters.contains(&model_id) {
        return Json(model_card(&state, &model_id)).into_response();
    }
    let message = format!(
        "The model `{model_id}` does not exist; this server serves `{}`",
        state.info.model_id
    );
    let mut response = OpenAiError::invalid("model", message).into_response();
    *response.status_mut() = axum::http::StatusCode::NOT_FOUND;
    response
}

fn model_card(state: &AppState, name: &str) -> ModelCard {
    ModelCard {
        id: name.to_string(),
        object: "model",
        created: state.openai.served_since_s,
        owned_by: "ferrite",
        max_model_len: state.info.max_total_tokens,
    }
}
