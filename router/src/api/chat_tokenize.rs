//! `POST /chat_tokenize` (TGI's): the chat template applied to the messages, and the tokens of
//! the result. The handler reads the whole chat completions body; the request types here only
//! describe it in the OpenAPI document.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::tokenize::SimpleToken;

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ChatTokenizeResponse {
    /// The tokens of `templated_text` (as `/tokenize` returns them; the template wrote the
    /// special tokens, none are added).
    pub tokenize_response: Vec<SimpleToken>,
    /// The prompt the chat template renders, ending with the assistant's turn header.
    #[schema(example = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")]
    pub templated_text: String,
}

/// One chat message (OpenAI's shape; content may also be a list of `{"type": "text"}` parts).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[allow(dead_code)] // describes the body in the OpenAPI document only
pub struct ChatMessageDoc {
    #[schema(example = "user")]
    pub role: String,
    #[schema(example = "What is the capital of France?")]
    pub content: String,
}

/// A chat completions body (`/v1/chat/completions`); only `messages` matters here.
#[derive(Debug, Clone, ToSchema)]
#[allow(dead_code)] // describes the body in the OpenAPI document only
pub struct ChatTokenizeRequest {
    #[schema(nullable, example = "tgi")]
    pub model: Option<String>,
    #[schema(min_items = 1)]
    pub messages: Vec<ChatMessageDoc>,
}
