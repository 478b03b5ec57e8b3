//! Failures of the OpenAI routes in OpenAI's shape:
//! `{"error": {"message", "type", "param", "code"}}`. A bad parameter value is a 400 (as at
//! OpenAI), something ferrite does not do (`suffix`, a model without a chat template, a tool
//! schema the grammar engine refuses) a 422, a full queue a 429; failures shared with TGI's
//! routes (`ApiError`) keep their status.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::error::ApiError;
use crate::validation::ValidationError;

use super::template::TemplateError;

#[derive(Debug, thiserror::Error)]
pub enum OpenAiError {
    /// A parameter has a value OpenAI's API refuses too.
    #[error("{message}")]
    InvalidParameter {
        param: &'static str,
        message: String,
    },
    /// The prompt plus the completion do not fit.
    #[error("{message}")]
    ContextLength {
        param: &'static str,
        message: String,
    },
    /// A feature ferrite does not have yet.
    #[error("`{param}` is not supported yet")]
    NotSupported { param: &'static str },
    /// A well-formed parameter that cannot be served (a tool schema the engine refuses).
    #[error("{message}")]
    Unprocessable {
        param: &'static str,
        message: String,
    },
    #[error(
        "this model has no chat template (no chat_template.jinja and no `chat_template` in \
         tokenizer_config.json): use /v1/completions with a prompt instead"
    )]
    NoChatTemplate,
    #[error("{0}")]
    Template(#[from] TemplateError),
    #[error("{0}")]
    Api(#[from] ApiError),
}

impl OpenAiError {
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidParameter {
            param,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidParameter { .. } | Self::ContextLength { .. } => StatusCode::BAD_REQUEST,
            Self::NotSupported { .. }
            | Self::Unprocessable { .. }
            | Self::NoChatTemplate
            | Self::Template(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Api(error) => error.status(),
        }
    }

    /// The failure-metric label (TGI's `error_type` names).
    pub fn metric_type(&self) -> &'static str {
        match self {
            Self::Api(error) => error.error_type(),
            _ => "validation",
        }
    }

    pub fn body(&self) -> ErrorBody {
        let status = self.status();
        let (param, code) = match self {
            Self::InvalidParameter { param, .. } => (Some(*param), None),
            Self::ContextLength { param, .. } => (Some(*param), Some("context_length_exceeded")),
            Self::NotSupported { param } => (Some(*param), Some("not_supported")),
            Self::Unprocessable { param, .. } => (Some(*param), None),
            Self::NoChatTemplate => (Some("messages"), Some("no_chat_template")),
            Self::Template(_) => (Some("messages"), Some("chat_template_error")),
            Self::Api(error) => (None, Some(error.error_type())),
        };
        let error_type = match status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            // 424: the request was fine, the generation failed.
            StatusCode::FAILED_DEPENDENCY => "server_error",
            status if status.is_client_error() => "invalid_request_error",
            _ => "server_error",
        };
        ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                error_type,
                param: param.map(str::to_string),
                code: code.map(str::to_string),
            },
        }
    }
}

/// Validation failures of the shared validator, re-worded where OpenAI names things differently.
impl From<ValidationError> for OpenAiError {
    fn from(error: ValidationError) -> Self {
        Self::from_validation(error, "prompt")
    }
}

impl OpenAiError {
    /// Like `From`, naming `prompt_param` ("messages" or "prompt") when the prompt is too long.
    pub fn from_validation(error: ValidationError, prompt_param: &'static str) -> Self {
        match error {
            ValidationError::InputLength {
                max_input_tokens,
                input_tokens,
            } => Self::ContextLength {
                param: prompt_param,
                message: format!(
                    "This model's maximum prompt length is {max_input_tokens} tokens. However, \
                     your prompt has {input_tokens} tokens. Please shorten the prompt."
                ),
            },
            ValidationError::MaxTotalTokens {
                max_total_tokens,
                input_tokens,
                max_new_tokens,
            } => Self::ContextLength {
                param: "max_tokens",
                message: format!(
                    "This model's maximum context length is {max_total_tokens} tokens. \
                         However, you requested {} tokens ({input_tokens} in the prompt, \
                         {max_new_tokens} for the completion). Please reduce the prompt or \
                         `max_tokens`.",
                    input_tokens + max_new_tokens as usize
                ),
            },
            ValidationError::EmptyInput => {
                Self::invalid(prompt_param, "the prompt must not be empty")
            }
            ValidationError::Tokenizer(message) => Self::invalid(prompt_param, message),
            other => Self::Api(ApiError::Validation(other)),
        }
    }
}

impl From<crate::scheduler::interface::AdmissionError> for OpenAiError {
    fn from(error: crate::scheduler::interface::AdmissionError) -> Self {
        Self::Api(ApiError::from(error))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub error_type: &'static str,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::error!(error = %self, "OpenAI request failed");
        } else {
            tracing::debug!(error = %self, "OpenAI request refused");
        }
        (self.status(), Json(self.body())).into_response()
    }
}

/// Malformed JSON (400), wrong field types (422), a missing content type (415) or a body
/// over the size limit (413), in OpenAI's shape.
pub fn body_rejection(rejection: JsonRejection) -> OpenAiError {
    OpenAiError::Api(ApiError::Body {
        status: rejection.status(),
        message: rejection.body_text(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::interface::AdmissionError;

    #[test]
    fn statuses_and_openai_shape() {
        let cases: [(OpenAiError, u16, &str, Option<&str>); 5] = [
            (
                OpenAiError::invalid("temperature", "bad"),
                400,
                "invalid_request_error",
                Some("temperature"),
            ),
            (
                OpenAiError::NotSupported { param: "tools" },
                422,
                "invalid_request_error",
                Some("tools"),
            ),
            (
                OpenAiError::NoChatTemplate,
                422,
                "invalid_request_error",
                Some("messages"),
            ),
            (
                AdmissionError::QueueFull { max_waiting: 4 }.into(),
                429,
                "rate_limit_error",
                None,
            ),
            (
                OpenAiError::Api(ApiError::IncompleteGeneration),
                500,
                "server_error",
                None,
            ),
        ];
        for (error, status, error_type, param) in cases {
            assert_eq!(error.status().as_u16(), status, "{error}");
            let body = error.body();
            assert_eq!(body.error.error_type, error_type);
            assert_eq!(body.error.param.as_deref(), param);
        }
        let json = serde_json::to_value(OpenAiError::NotSupported { param: "tools" }.body())
            .expect("json");
        assert_eq!(
            json,
            serde_json::json!({"error": {"message": "`tools` is not supported yet",
                "type": "invalid_request_error", "param": "tools", "code": "not_supported"}})
        );
    }

    #[test]
    fn length_errors_state_the_numbers() {
        let error = OpenAiError::from(ValidationError::MaxTotalTokens {
            max_total_tokens: 64,
            input_tokens: 60,
            max_new_tokens: 10,
        });
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        let message = error.to_string();
        assert!(
            message.contains("64 tokens") && message.contains("70 tokens"),
            "{message}"
        );
        assert_eq!(
            error.body().error.code.as_deref(),
            Some("context_length_exceeded")
        );
    }
}
