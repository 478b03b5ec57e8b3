//! `GET /docs`: Swagger UI over `/api-doc/openapi.json`. Its files are compiled into the
//! router (utoipa-swagger-ui's `vendored` feature), so the page works without internet access
//! on the server or in the browser; the online spec validator is turned off.

use axum::Router;
use utoipa_swagger_ui::{Config, SwaggerUi};

pub const DOCS_PATH: &str = "/docs";
pub const OPENAPI_PATH: &str = "/api-doc/openapi.json";

/// The Swagger UI routes (`/docs`, `/docs/`, `/docs/{file}`); the document itself is served by
/// `openapi::openapi_json`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let config = Config::new([OPENAPI_PATH]).validator_url("none");
    Router::from(SwaggerUi::new(DOCS_PATH).config(config))
}

/// Swagger UI: browse and try the routes of this document.
#[utoipa::path(
    get,
    path = "/docs/",
    tag = "Text Generation Inference",
    responses((status = 200, description = "Swagger UI (HTML)", body = String, content_type = "text/html"))
)]
#[allow(dead_code)] // documents the page; SwaggerUi's router serves it
pub async fn docs_page() {}
