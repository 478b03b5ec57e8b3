//! The HTTP front: routes (TGI's API), SSE framing, auth, CORS and body limits. `app()` builds
//! the whole service so tests drive it with `tower::ServiceExt::oneshot`.

pub mod auth;
pub mod compat;
pub mod deadline;
pub mod generate;
pub mod headers;
pub mod health;
pub mod json;
pub mod metrics_listener;
pub mod openapi;
pub mod ops;
pub mod sse;
pub mod state;
pub mod stream;
pub mod tokenize;

use axum::extract::DefaultBodyLimit;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderValue, Method};
use axum::routing::{get, post};
use axum::{middleware, Router};
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use state::AppState;

pub fn app(state: AppState) -> Router {
    // Routes that generate (or tokenize) need the API key when one is set. The OpenAI routes
    // (`/v1/...`) belong here too, merged beside TGI's.
    let generation = Router::new()
        .route("/", post(compat::compat_generate))
        .route("/generate", post(generate::generate))
        .route("/generate_stream", post(stream::generate_stream))
        .route("/tokenize", post(tokenize::tokenize))
        .merge(crate::openai::routes())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ))
        // Outermost: refused (401) requests get their span and id too.
        .route_layer(middleware::from_fn(
            crate::telemetry::request_span::trace_request,
        ));
    let operations = Router::new()
        .route("/health", get(ops::health))
        .route("/info", get(ops::info))
        .route("/metrics", get(ops::metrics))
        .route("/api-doc/openapi.json", get(openapi::openapi_json));
    let mut router = Router::new()
        .merge(generation)
        .merge(operations)
        .layer(DefaultBodyLimit::max(state.server.payload_limit_bytes));
    if let Some(cors) = cors_layer(&state.server.cors_allow_origins) {
        router = router.layer(cors);
    }
    router.with_state(state)
}

/// CORS for the configured origins (`*` allows any); none configured means no CORS headers,
/// so browsers keep other sites from calling the API.
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .filter_map(|origin| match HeaderValue::from_str(origin) {
                Ok(value) => Some(value),
                Err(_) => {
                    tracing::warn!(origin, "ignoring an invalid --cors-allow-origin");
                    None
                }
            });
        AllowOrigin::list(values)
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([CONTENT_TYPE, AUTHORIZATION]),
    )
}

#[cfg(test)]
mod tests;
