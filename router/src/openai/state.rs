//! What the OpenAI routes know beyond the shared app state: the model's chat template (read
//! once at start-up) and the fixed parts of every response.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::error::OpenAiError;
use super::template::{ChatTemplate, TemplateError};

#[derive(Debug, Clone)]
enum TemplateStatus {
    Ready(Arc<ChatTemplate>),
    Missing,
    /// The model has a template that cannot be read or compiled; chat requests say why.
    Broken(TemplateError),
}

#[derive(Debug, Clone)]
pub struct OpenAiState {
    template: TemplateStatus,
    /// `system_fingerprint` of every response: the server build serving the model.
    pub system_fingerprint: String,
    /// When the model started being served (`created` of /v1/models), Unix seconds.
    pub served_since_s: u64,
}

impl OpenAiState {
    /// Reads the chat template from the model directory (an empty path: no template), or
    /// from `tokenizer_config` when given.
    pub fn load(model_dir: &Path, tokenizer_config: Option<&Path>) -> Self {
        let template = if model_dir.as_os_str().is_empty() && tokenizer_config.is_none() {
            Ok(None)
        } else {
            ChatTemplate::load_with_config(model_dir, tokenizer_config)
        };
        Self::with_template(template)
    }

    pub fn with_template(template: Result<Option<ChatTemplate>, TemplateError>) -> Self {
        let template = match template {
            Ok(Some(template)) => TemplateStatus::Ready(Arc::new(template)),
            Ok(None) => {
                tracing::info!("the model has no chat template: /v1/chat/completions answers 422");
                TemplateStatus::Missing
            }
            Err(error) => {
                tracing::warn!(%error, "the model's chat template is unusable");
                TemplateStatus::Broken(error)
            }
        };
        Self {
            template,
            system_fingerprint: format!("ferrite-{}-native", env!("CARGO_PKG_VERSION")),
            served_since_s: unix_now_s(),
        }
    }

    pub fn chat_template(&self) -> Result<Arc<ChatTemplate>, OpenAiError> {
        match &self.template {
            TemplateStatus::Ready(template) => Ok(Arc::clone(template)),
            TemplateStatus::Missing => Err(OpenAiError::NoChatTemplate),
            TemplateStatus::Broken(error) => Err(error.clone().into()),
        }
    }
}

pub fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// A fresh response id: `prefix` and 128 random bits (`chatcmpl-…`, `cmpl-…`).
pub fn response_id(prefix: &str) -> String {
    format!("{prefix}-{:032x}", rand::random::<u128>())
}
