//! `POST /chat_tokenize` (TGI's): the chat template applied to the messages, and the tokens of
//! the result. The request is a chat completions body (`ChatCompletionRequest`).

use serde::Serialize;
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
