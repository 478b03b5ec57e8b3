//! OpenAI request bodies (`/v1/chat/completions`, `/v1/completions`): field names, shapes and
//! defaults only; `parameters.rs` checks the values. Unknown fields are ignored (clients send
//! extras such as `parallel_tool_calls`), and `null` means "not given".

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `"text"` or `["a", "b"]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(text) => vec![text],
            Self::Many(texts) => texts,
        }
    }
}

/// A completions prompt: text, texts, token ids or lists of token ids. A list gives one
/// prompt (and `n` choices) per element.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` (and no choices) before `[DONE]`.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// What both endpoints accept with the same meaning.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(default)]
pub struct CommonParameters {
    /// Echoed back. A LoRA adapter's name (`--lora-adapters`) generates with that adapter;
    /// the base model's id, or any name when no adapter is loaded, with the base model.
    pub model: Option<String>,
    pub max_tokens: Option<u32>,
    /// 0 means greedy.
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Choices per prompt, each an independent sample.
    pub n: Option<u32>,
    pub seed: Option<i64>,
    pub stop: Option<StringOrList>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// `{"token id": bias}`; kept as JSON so a wrong shape gets a precise message.
    #[schema(value_type = Option<Object>)]
    pub logit_bias: Option<serde_json::Value>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Accepted for compatibility (end-user id for abuse monitoring); not used.
    pub user: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(default)]
pub struct ChatCompletionRequest {
    pub messages: Vec<ChatMessage>,
    /// Newer name of `max_tokens`; wins when both are given.
    pub max_completion_tokens: Option<u32>,
    pub logprobs: Option<bool>,
    /// Alternatives per token (needs `logprobs: true`).
    pub top_logprobs: Option<u32>,
    /// `{"type": "text"}`, `{"type": "json_object"}` or `{"type": "json_schema",
    /// "json_schema": {"name": ..., "schema": {...}, "strict": true}}`: the output is forced
    /// to be valid (a grammar), whatever the model would have said.
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<serde_json::Value>,
    /// `[{"type": "function", "function": {"name", "description", "parameters"}}]`.
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<serde_json::Value>,
    /// `"none"`, `"auto"` (the default with tools), `"required"` or
    /// `{"type": "function", "function": {"name": ...}}`; the last two force a call (a grammar).
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<serde_json::Value>,
    /// TGI's extension: the instruction shown with the tools when the chat template itself
    /// does not show them.
    pub tool_prompt: Option<String>,
    #[serde(flatten)]
    pub common: CommonParameters,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct ChatMessage {
    pub role: String,
    /// Null for an assistant turn that only called tools.
    #[serde(default)]
    pub content: Option<MessageContent>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tool_calls: Option<serde_json::Value>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

/// A string, or a list of typed parts (`{"type": "text", "text": ...}`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    /// Return the logprobs of the sampled token and of this many alternatives.
    #[serde(default)]
    pub logprobs: Option<u32>,
    /// Put the prompt in front of the completion.
    #[serde(default)]
    pub echo: Option<bool>,
    /// Only `best_of` == `n` (the default) is supported.
    #[serde(default)]
    pub best_of: Option<u32>,
    /// Text after the completion (insertion); not supported.
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(flatten)]
    pub common: CommonParameters,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn completion(body: serde_json::Value) -> CompletionRequest {
        serde_json::from_value(body).expect("valid completion request")
    }

    #[test]
    fn prompt_is_text_texts_or_token_ids() {
        assert_eq!(
            completion(json!({"prompt": "Hi"})).prompt,
            Prompt::Text("Hi".into())
        );
        assert_eq!(
            completion(json!({"prompt": ["a", "b"]})).prompt,
            Prompt::Texts(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            completion(json!({"prompt": [1, 2]})).prompt,
            Prompt::Tokens(vec![1, 2])
        );
        assert_eq!(
            completion(json!({"prompt": [[1], [2, 3]]})).prompt,
            Prompt::TokenLists(vec![vec![1], vec![2, 3]])
        );
        assert!(serde_json::from_value::<CompletionRequest>(json!({"prompt": 3})).is_err());
        assert!(serde_json::from_value::<CompletionRequest>(json!({"max_tokens": 3})).is_err());
    }

    #[test]
    fn stop_is_a_string_or_a_list_and_null_is_absent() {
        let one = completion(json!({"prompt": "x", "stop": "\n"}));
        assert_eq!(
            one.common.stop.map(StringOrList::into_vec),
            Some(vec!["\n".to_string()])
        );
        let many = completion(json!({"prompt": "x", "stop": ["a", "b"]}));
        assert_eq!(
            many.common.stop.map(StringOrList::into_vec),
            Some(vec!["a".into(), "b".into()])
        );
        let null = completion(json!({"prompt": "x", "stop": null, "n": null, "echo": null}));
        assert_eq!(
            (null.common.stop, null.common.n, null.echo),
            (None, None, None)
        );
    }

    #[test]
    fn chat_request_with_everything_a_client_sends() {
        // huggingface_hub sends every parameter, most of them null, plus fields OpenAI lacks.
        let body = json!({
            "model": "tgi", "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "1"}]},
            ],
            "frequency_penalty": null, "logit_bias": null, "logprobs": true, "max_tokens": 5,
            "n": 2, "presence_penalty": 0.5, "response_format": null, "seed": -1, "stop": ["x"],
            "temperature": 0.0, "tool_choice": null, "tool_prompt": null, "tools": null,
            "top_logprobs": 3, "top_p": null, "stream": true,
            "stream_options": {"include_usage": true}, "user": "u1",
        });
        let request: ChatCompletionRequest = serde_json::from_value(body).expect("parses");
        assert_eq!(request.messages.len(), 3);
        assert_eq!(
            request.messages[1].content,
            Some(MessageContent::Parts(vec![ContentPart {
                kind: "text".into(),
                text: Some("Hi".into())
            }]))
        );
        assert_eq!(request.messages[2].content, None);
        assert_eq!(
            (request.logprobs, request.top_logprobs),
            (Some(true), Some(3))
        );
        assert_eq!(
            (request.response_format, request.tools, request.tool_choice),
            (None, None, None)
        );
        let common = request.common;
        assert_eq!(
            (common.max_tokens, common.n, common.seed),
            (Some(5), Some(2), Some(-1))
        );
        assert_eq!(
            (common.temperature, common.presence_penalty),
            (Some(0.0), Some(0.5))
        );
        assert_eq!(
            common
                .stream_options
                .and_then(|options| options.include_usage),
            Some(true)
        );
        assert_eq!(common.model.as_deref(), Some("tgi"));
    }
}
