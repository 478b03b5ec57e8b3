//! Chat templates: the model's Jinja template turns a list of messages into the prompt text,
//! rendered here in Rust (minijinja) the way `transformers.apply_chat_template` renders it:
//! `trim_blocks` + `lstrip_blocks`, loop controls, `raise_exception`, a Python-style `tojson`,
//! `strftime_now`, Python string / dict methods, and the tokenizer's special tokens
//! (`bos_token`, `eos_token`, ...) as variables.
//!
//! The template comes from the model directory's `chat_template.jinja`, else from
//! `tokenizer_config.json`'s `chat_template` (a string, or a list of named templates of which
//! "default" is used) — the order transformers reads them in.

mod clock;
mod functions;
mod json;
mod source;

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::value::{Serde, Value};
use minijinja::{context, AutoEscape, Environment, ErrorKind};
use serde::Serialize;

pub use source::TemplateSource;

const TEMPLATE_NAME: &str = "chat";

#[derive(Debug, Clone, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read the chat template from {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("the model's chat template does not compile: {0}")]
    Compile(String),
    /// The template refused the conversation (`raise_exception`) or failed while rendering.
    #[error("the chat template failed: {0}")]
    Render(String),
}

/// One message as templates see it: `role` and `content` (text), plus the optional keys that
/// templates test with `is defined`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TemplateMessage {
    pub role: String,
    pub content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl TemplateMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            name: None,
            tool_calls: None,
            tool_call_id: None,
        }
    }
}

/// A compiled chat template with the special tokens it may refer to.
pub struct ChatTemplate {
    environment: Environment<'static>,
    /// `bos_token`, `eos_token`, ... as strings (from tokenizer_config.json).
    special_tokens: BTreeMap<String, String>,
    /// Whether the template reads the `tools` variable / messages' `tool_calls` (else the
    /// caller writes them into the messages' text: openai/tool_prompt.rs).
    reads_tools: bool,
    reads_tool_calls: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("special_tokens", &self.special_tokens)
            .finish()
    }
}

impl ChatTemplate {
    /// Reads the model directory's template; `Ok(None)` when the model has none.
    pub fn load(model_dir: &Path) -> Result<Option<Self>, TemplateError> {
        Self::load_with_config(model_dir, None)
    }

    /// As `load`, with `tokenizer_config` replacing the directory's tokenizer_config.json.
    pub fn load_with_config(
        model_dir: &Path,
        tokenizer_config: Option<&Path>,
    ) -> Result<Option<Self>, TemplateError> {
        match TemplateSource::read(model_dir, tokenizer_config)? {
            Some(source) => Self::compile(source).map(Some),
            None => Ok(None),
        }
    }

    pub fn compile(source: TemplateSource) -> Result<Self, TemplateError> {
        let mut environment = Environment::new();
        // What transformers configures: Jinja2 with trim_blocks, lstrip_blocks and loopcontrols.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|error| TemplateError::Compile(error.to_string()))?;
        environment.set_syntax(syntax);
        environment.set_auto_escape_callback(|_| AutoEscape::None);
        environment
            .set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        functions::register(&mut environment);
        // What TGI checks too: a template that never names them cannot show them.
        let reads_tools = source.template.contains("tools");
        let reads_tool_calls = source.template.contains("tool_calls");
        environment
            .add_template_owned(TEMPLATE_NAME, source.template)
            .map_err(|error| TemplateError::Compile(describe(&error)))?;
        Ok(Self {
            environment,
            special_tokens: source.special_tokens,
            reads_tools,
            reads_tool_calls,
        })
    }

    pub fn reads_tools(&self) -> bool {
        self.reads_tools
    }

    pub fn reads_tool_calls(&self) -> bool {
        self.reads_tool_calls
    }

    /// The prompt for `messages`; with `add_generation_prompt` the template appends the
    /// header of the assistant's turn.
    pub fn render(
        &self,
        messages: &[TemplateMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// As `render`, with `tools` (OpenAI's list of `{"type": "function", "function": ...}`,
    /// the shape transformers hands templates) as the template's `tools` variable.
    pub fn render_with_tools(
        &self,
        messages: &[TemplateMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let template = self
            .environment
            .get_template(TEMPLATE_NAME)
            .map_err(|error| TemplateError::Render(describe(&error)))?;
        let special_tokens: BTreeMap<&str, Value> = self
            .special_tokens
            .iter()
            .map(|(name, token)| (name.as_str(), Value::from(token.as_str())))
            .collect();
        // transformers passes `tools` and `documents` explicitly (as None when absent).
        let context = context! {
            messages => Value::from(Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            tools => tools.map_or(Value::from(()), |tools| Value::from(Serde(tools))),
            documents => Value::from(()),
            ..Value::from(special_tokens)
        };
        template
            .render(context)
            .map_err(|error| TemplateError::Render(describe(&error)))
    }

    pub fn special_token(&self, name: &str) -> Option<&str> {
        self.special_tokens.get(name).map(String::as_str)
    }
}

/// A template's own message (`raise_exception("...")`) verbatim; other errors with minijinja's
/// description of where they happened.
fn describe(error: &minijinja::Error) -> String {
    match (error.kind(), error.detail()) {
        (ErrorKind::InvalidOperation, Some(detail)) if functions::is_raised(error) => detail.into(),
        _ => {
            let mut message = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            message
        }
    }
}

#[cfg(test)]
mod tests;
