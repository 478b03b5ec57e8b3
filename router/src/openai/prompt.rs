//! From an OpenAI request to token ids: chat messages through the chat template, completion
//! prompts as text or ids, then the shared length rules. Tokenizing runs on a blocking thread
//! (long prompts take milliseconds).

use std::sync::Arc;

use crate::config::RequestLimits;
use crate::http::AppState;
use crate::tokenizer::TextTokenizer;
use crate::validation::{check_lengths, ValidationError};

use super::choices::PreparedPrompt;
use super::error::OpenAiError;
use super::request::{ChatMessage, MessageContent, Prompt};
use super::template::{ChatTemplate, TemplateMessage};
use super::tool_prompt::template_input;
use super::tools::ToolUse;

/// What the chat template renders: the messages, and the tools the request uses.
#[derive(Debug, Clone)]
pub struct Conversation {
    pub messages: Vec<ChatMessage>,
    pub tools: Option<ToolUse>,
    /// TGI's `tool_prompt`: the instruction shown with the tools to templates without tools.
    pub tool_prompt: Option<String>,
}

/// The prompt text of a conversation (what `/chat_tokenize` shows too).
pub fn render_chat(
    template: &ChatTemplate,
    conversation: Conversation,
) -> Result<String, OpenAiError> {
    let messages = template_messages(conversation.messages)?;
    let input = template_input(
        template,
        messages,
        conversation.tools.as_ref(),
        conversation.tool_prompt.as_deref(),
    )?;
    Ok(template.render_with_tools(&input.messages, input.tools.as_deref(), true)?)
}

/// The messages as the template sees them: text content (text parts joined by newlines).
pub fn template_messages(messages: Vec<ChatMessage>) -> Result<Vec<TemplateMessage>, OpenAiError> {
    if messages.is_empty() {
        return Err(OpenAiError::invalid(
            "messages",
            "`messages` must contain at least one message",
        ));
    }
    messages
        .into_iter()
        .map(|message| {
            let content = match message.content {
                None => String::new(),
                Some(MessageContent::Text(text)) => text,
                Some(MessageContent::Parts(parts)) => {
                    let mut texts = Vec::with_capacity(parts.len());
                    for part in parts {
                        match (part.kind.as_str(), part.text) {
                            ("text", Some(text)) => texts.push(text),
                            (kind, _) => {
                                let message = format!(
                                    "message content parts of type `{kind}` are not supported"
                                );
                                return Err(OpenAiError::invalid("messages", message));
                            }
                        }
                    }
                    texts.join("\n")
                }
            };
            Ok(TemplateMessage {
                role: message.role,
                content,
                name: message.name,
                tool_calls: message.tool_calls,
                tool_call_id: message.tool_call_id,
            })
        })
        .collect()
}

/// Renders the conversation and tokenizes it without adding special tokens: the template
/// already wrote them (as `apply_chat_template(tokenize=True)` does).
pub async fn chat_prompt(
    tokenizer: Arc<TextTokenizer>,
    template: Arc<ChatTemplate>,
    conversation: Conversation,
) -> Result<(String, Vec<u32>), OpenAiError> {
    let work = move || -> Result<(String, Vec<u32>), OpenAiError> {
        let text = render_chat(&template, conversation)?;
        let encoding = tokenizer
            .inner()
            .encode(text.as_str(), false)
            .map_err(|error| {
                OpenAiError::invalid("messages", format!("tokenizer error: {error}"))
            })?;
        Ok((text, encoding.get_ids().to_vec()))
    };
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| OpenAiError::invalid("messages", format!("tokenizer error: {error}")))?
}

/// Each prompt of a completions request as (text, ids); text is tokenized with the
/// tokenizer's special tokens (BOS), ids are taken as they are.
pub async fn completion_prompts(
    state: &AppState,
    prompt: Prompt,
) -> Result<Vec<(String, Vec<u32>)>, OpenAiError> {
    let texts = match prompt {
        Prompt::Text(text) => vec![text],
        Prompt::Texts(texts) => texts,
        Prompt::Tokens(ids) => return Ok(vec![ids_prompt(state.tokenizer(), ids)?]),
        Prompt::TokenLists(lists) => {
            return lists
                .into_iter()
                .map(|ids| ids_prompt(state.tokenizer(), ids))
                .collect();
        }
    };
    if texts.is_empty() {
        return Err(OpenAiError::invalid(
            "prompt",
            "`prompt` must not be an empty list",
        ));
    }
    let mut prompts = Vec::with_capacity(texts.len());
    for text in texts {
        if text.is_empty() {
            return Err(OpenAiError::invalid("prompt", "`prompt` must not be empty"));
        }
        let encoding = state.validator.tokenize(text.clone(), None).await?;
        prompts.push((text, encoding.get_ids().to_vec()));
    }
    Ok(prompts)
}

fn ids_prompt(tokenizer: &TextTokenizer, ids: Vec<u32>) -> Result<(String, Vec<u32>), OpenAiError> {
    let vocab_size = tokenizer.inner().get_vocab_size(true);
    if ids.is_empty() {
        return Err(OpenAiError::invalid("prompt", "`prompt` must not be empty"));
    }
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab_size) {
        return Err(OpenAiError::invalid(
            "prompt",
            format!("token id {bad} is not below the vocabulary size {vocab_size}"),
        ));
    }
    let text = tokenizer
        .decode(&ids)
        .map_err(|error| OpenAiError::invalid("prompt", error.to_string()))?;
    Ok((text, ids))
}

/// Applies the length limits; without `max_tokens` the completion may fill the context.
/// `prompt_param` names the prompt in errors ("messages" or "prompt").
pub fn with_budget(
    (text, input_ids): (String, Vec<u32>),
    max_tokens: Option<u32>,
    limits: &RequestLimits,
    prompt_param: &'static str,
) -> Result<PreparedPrompt, OpenAiError> {
    let refused = |error| OpenAiError::from_validation(error, prompt_param);
    let max_new_tokens = check_lengths(input_ids.len(), max_tokens, limits).map_err(refused)?;
    if max_new_tokens == 0 {
        let (max_total_tokens, input_tokens) = (limits.max_total_tokens, input_ids.len());
        return Err(refused(ValidationError::MaxTotalTokens {
            max_total_tokens,
            input_tokens,
            max_new_tokens: 1,
        }));
    }
    Ok(PreparedPrompt {
        input_ids,
        text,
        max_new_tokens,
    })
}
