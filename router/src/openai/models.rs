//! `GET /v1/models` and `GET /v1/models/{id}`: the one model this server serves.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::http::AppState;

use super::error::{ErrorBody, OpenAiError};
use super::response::{ModelCard, ModelList};

/// The served model, as OpenAI lists models.
#[utoipa::path(get, path = "/v1/models", tag = "OpenAI",
    responses((status = 200, description = "The served model", body = ModelList)))]
pub async fn list_models(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![model_card(&state)],
    })
}

/// The served model by name; 404 for any other name.
#[utoipa::path(get, path = "/v1/models/{model_id}", tag = "OpenAI",
    params(("model_id" = String, Path, description = "The model's name")),
    responses(
        (status = 200, description = "The served model", body = ModelCard),
        (status = 404, description = "Not the served model", body = ErrorBody),
    ))]
pub async fn get_model(State(state): State<AppState>, Path(model_id): Path<String>) -> Response {
    if model_id == state.info.model_id {
        return Json(model_card(&state)).into_response();
    }
    let message = format!(
        "The model `{model_id}` does not exist; this server serves `{}`",
        state.info.model_id
    );
    let mut response = OpenAiError::invalid("model", message).into_response();
    *response.status_mut() = axum::http::StatusCode::NOT_FOUND;
    response
}

fn model_card(state: &AppState) -> ModelCard {
    ModelCard {
        id: state.info.model_id.clone(),
        object: "model",
        created: state.openai.served_since_s,
        owned_by: "ferrite",
        max_model_len: state.info.max_total_tokens,
    }
}
