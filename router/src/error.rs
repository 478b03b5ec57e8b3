//! Every way an API request can fail, and the one place failures become HTTP (status code and
//! TGI's `{"error", "error_type"}` body). Streams that already started send the same body as
//! their last SSE event instead.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api::error::ErrorResponse;
use crate::scheduler::interface::{AdmissionError, GenerationError, TimeoutPhase};
use crate::validation::ValidationError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Input validation error: {0}")]
    Validation(#[from] ValidationError),
    /// The waiting queue is full.
    #[error(
        "Model is overloaded: {max_waiting_requests} requests are already waiting, try again later"
    )]
    Overloaded { max_waiting_requests: usize },
    /// The scheduler is gone (shutting down).
    #[error("The server is shutting down")]
    Unavailable,
    #[error("Request failed during generation: {0}")]
    Generation(#[from] GenerationError),
    /// The scheduler closed the request's channel without a final token.
    #[error("Incomplete generation")]
    IncompleteGeneration,
    /// The body could not be read or parsed (malformed JSON, wrong types, too large).
    #[error("{message}")]
    Body { status: StatusCode, message: String },
    /// The health probe (a one-token generation) failed.
    #[error("Unhealthy: {0}")]
    Unhealthy(String),
    #[error("Unauthorized: a valid `Authorization: Bearer <api key>` header is required")]
    Unauthorized,
    #[error("Internal error: {0}")]
    Internal(String),
}

impl From<AdmissionError> for ApiError {
    fn from(error: AdmissionError) -> Self {
        match error {
            AdmissionError::QueueFull { max_waiting } => Self::Overloaded {
                max_waiting_requests: max_waiting,
            },
            AdmissionError::Stopped => Self::Unavailable,
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable | Self::Unhealthy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Generation(GenerationError::TimedOut { phase, .. }) => match phase {
                // Never started: safe to retry, as after a client-side timeout.
                TimeoutPhase::Queued => StatusCode::REQUEST_TIMEOUT,
                TimeoutPhase::Generating => StatusCode::GATEWAY_TIMEOUT,
            },
            Self::Generation(_) => StatusCode::FAILED_DEPENDENCY,
            Self::IncompleteGeneration | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Body { status, .. } => *status,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
        }
    }

    /// TGI's `error_type`; also the label of the failure metric.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::Validation(_) => "validation",
            Self::Overloaded { .. } => "overloaded",
            Self::Unavailable => "unavailable",
            Self::Unhealthy(_) => "healthcheck",
            Self::Generation(GenerationError::TimedOut { .. }) => "timeout",
            Self::Generation(_) => "generation",
            Self::IncompleteGeneration => "incomplete_generation",
            Self::Body { status, .. } if *status == StatusCode::PAYLOAD_TOO_LARGE => {
                "payload_too_large"
            }
            Self::Body { .. } => "validation",
            Self::Unauthorized => "authentication",
            Self::Internal(_) => "internal",
        }
    }

    pub fn body(&self) -> ErrorResponse {
        ErrorResponse {
            error: self.to_string(),
            error_type: self.error_type().to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, "request refused");
        }
        (self.status(), Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_types_follow_tgi() {
        let cases = [
            (ApiError::from(ValidationError::TopK), 422, "validation"),
            (
                AdmissionError::QueueFull { max_waiting: 3 }.into(),
                429,
                "overloaded",
            ),
            (
                GenerationError::Shard("boom".into()).into(),
                424,
                "generation",
            ),
            (ApiError::IncompleteGeneration, 500, "incomplete_generation"),
            (
                GenerationError::TimedOut {
                    budget_s: 2.0,
                    phase: TimeoutPhase::Queued,
                }
                .into(),
                408,
                "timeout",
            ),
            (
                GenerationError::TimedOut {
                    budget_s: 2.0,
                    phase: TimeoutPhase::Generating,
                }
                .into(),
                504,
                "timeout",
            ),
            (ApiError::Unauthorized, 401, "authentication"),
            (AdmissionError::Stopped.into(), 503, "unavailable"),
        ];
        for (error, status, error_type) in cases {
            assert_eq!(error.status().as_u16(), status, "{error}");
            assert_eq!(error.body().error_type, error_type);
        }
        let too_large = ApiError::Body {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: "too big".into(),
        };
        assert_eq!(too_large.body().error_type, "payload_too_large");
        assert_eq!(
            ApiError::from(ValidationError::Temperature).body().error,
            "Input validation error: `temperature` must be strictly positive"
        );
    }
}
