//! TGI's error body: `{"error": "...", "error_type": "..."}`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorResponse {
    #[schema(example = "Input validation error: `temperature` must be strictly positive")]
    pub error: String,
    /// `validation`, `overloaded`, `generation`, `incomplete_generation`, `authentication`,
    /// `payload_too_large`, `unavailable` or `internal`.
    #[schema(example = "validation")]
    pub error_type: String,
}
