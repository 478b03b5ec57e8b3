//! The operational routes, open even with `--api-key`: /health, /info, /metrics.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;

use crate::api::error::ErrorResponse;
use crate::api::info::Info;
use crate::error::ApiError;

use super::state::AppState;

/// Health check: 200 once a generation has gone through since the last failure.
#[utoipa::path(
    get,
    path = "/health",
    tag = "Text Generation Inference",
    responses(
        (status = 200, description = "Everything is working fine"),
        (status = 503, description = "Text generation inference is down", body = ErrorResponse),
    )
)]
pub async fn health(State(state): State<AppState>) -> Result<StatusCode, ApiError> {
    state.health.check(state.submitter.as_ref()).await?;
    Ok(StatusCode::OK)
}

/// Model and router information.
#[utoipa::path(
    get,
    path = "/info",
    tag = "Text Generation Inference",
    responses((status = 200, description = "Served model info", body = Info))
)]
pub async fn info(State(state): State<AppState>) -> Json<Info> {
    Json(state.info.clone())
}

/// Prometheus metrics.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "Text Generation Inference",
    responses((status = 200, description = "Prometheus metrics", body = String))
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let text = state.metrics().render(&state.submitter.stats());
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
}
