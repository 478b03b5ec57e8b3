//! Response item of `POST /tokenize`: one token with its byte span in the input.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SimpleToken {
    #[schema(example = 0)]
    pub id: u32,
    /// The input text the token covers (empty for tokens the post-processor added).
    #[schema(example = "test")]
    pub text: String,
    /// Byte offsets of `text` in the input.
    #[schema(example = 0)]
    pub start: usize,
    #[schema(example = 2)]
    pub stop: usize,
}
