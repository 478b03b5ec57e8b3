//! Where a model keeps its chat template and special tokens.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::TemplateError;

const TEMPLATE_FILE: &str = "chat_template.jinja";
const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// The special tokens transformers hands every template (its `special_tokens_map`).
const SPECIAL_TOKEN_NAMES: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// A template's text and the special tokens it may refer to.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateSource {
    pub template: String,
    pub special_tokens: BTreeMap<String, String>,
}

impl TemplateSource {
    /// `chat_template.jinja` wins over `tokenizer_config.json`'s `chat_template` (as in
    /// transformers); special tokens always come from `tokenizer_config.json`. An explicit
    /// `tokenizer_config` file (TGI's `--tokenizer-config-path`) replaces the directory's, and
    /// its `chat_template`, when it has one, wins over `chat_template.jinja`.
    pub fn read(
        model_dir: &Path,
        tokenizer_config: Option<&Path>,
    ) -> Result<Option<Self>, TemplateError> {
        let default_config = model_dir.join(TOKENIZER_CONFIG_FILE);
        let config = read_tokenizer_config(tokenizer_config.unwrap_or(&default_config))?;
        let explicit_template = tokenizer_config
            .and(config.as_ref())
            .and_then(|config| template_from_config(config.get("chat_template")?));
        let template_path = model_dir.join(TEMPLATE_FILE);
        let template = if explicit_template.is_some() {
            explicit_template
        } else if template_path.is_file() {
            Some(
                std::fs::read_to_string(&template_path).map_err(|error| TemplateError::Load {
                    path: template_path.display().to_string(),
                    reason: error.to_string(),
                })?,
            )
        } else {
            config
                .as_ref()
                .and_then(|config| template_from_config(config.get("chat_template")?))
        };
        let special_tokens = config.as_ref().map(special_tokens).unwrap_or_default();
        Ok(template.map(|template| Self {
            template,
            special_tokens,
        }))
    }
}

fn read_tokenizer_config(path: &Path) -> Result<Option<Value>, TemplateError> {
    if !path.is_file() {
        return Ok(None);
    }
    let load_error = |reason: String| TemplateError::Load {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|error| load_error(error.to_string()))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|error| load_error(error.to_string()))
}

/// A string, or a list of `{"name", "template"}` of which "default" is the chat template
/// (the others are for tool use or RAG and are chosen by name).
pub fn template_from_config(value: &Value) -> Option<String> {
    match value {
        Value::String(template) => Some(template.clone()),
        Value::Array(named) => named
            .iter()
            .find(|entry| entry.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|entry| entry.get("template")?.as_str().map(str::to_string)),
        _ => None,
    }
}

/// Special tokens are strings or AddedToken objects (`{"content": "<s>", ...}`).
pub fn special_tokens(config: &Value) -> BTreeMap<String, String> {
    SPECIAL_TOKEN_NAMES
        .iter()
        .filter_map(|&name| {
            let token = match config.get(name)? {
                Value::String(token) => token.clone(),
                Value::Object(added) => added.get("content")?.as_str()?.to_string(),
                _ => return None,
            };
            Some((name.to_string(), token))
        })
        .collect()
}
