//! Response bodies of the TGI generation routes, non-streamed and streamed (one SSE event).
//! Logprobs that do not exist (the first prompt token's) are NaN and serialize as `null`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Token {
    #[schema(example = 0)]
    pub id: u32,
    #[schema(example = "test")]
    pub text: String,
    #[schema(nullable, example = -0.34)]
    pub logprob: f32,
    /// A special token (e.g. EOS); its text is not part of `generated_text`.
    #[schema(example = false)]
    pub special: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PrefillToken {
    #[schema(example = 0)]
    pub id: u32,
    #[schema(example = "test")]
    pub text: String,
    #[schema(nullable, example = -0.34)]
    pub logprob: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum FinishReason {
    /// Reached `max_new_tokens`.
    #[serde(rename = "length")]
    Length,
    /// Produced an end-of-sequence token.
    #[serde(rename = "eos_token")]
    EndOfSequenceToken,
    /// The generated text contains one of the `stop` sequences.
    #[serde(rename = "stop_sequence")]
    StopSequence,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BestOfSequence {
    #[schema(example = "test")]
    pub generated_text: String,
    pub finish_reason: FinishReason,
    #[schema(example = 1)]
    pub generated_tokens: u32,
    #[schema(nullable, example = 42)]
    pub seed: Option<u64>,
    pub prefill: Vec<PrefillToken>,
    pub tokens: Vec<Token>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_tokens: Vec<Vec<Token>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Details {
    pub finish_reason: FinishReason,
    #[schema(example = 1)]
    pub generated_tokens: u32,
    /// The sampling seed; null for greedy decoding.
    #[schema(nullable, example = 42)]
    pub seed: Option<u64>,
    /// Prompt tokens with logprobs when `decoder_input_details` was asked, else empty.
    pub prefill: Vec<PrefillToken>,
    pub tokens: Vec<Token>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_tokens: Vec<Vec<Token>>,
    /// The other `best_of` candidates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_of_sequences: Option<Vec<BestOfSequence>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GenerateResponse {
    #[schema(example = "test")]
    pub generated_text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Details>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StreamDetails {
    pub finish_reason: FinishReason,
    #[schema(example = 1)]
    pub generated_tokens: u32,
    #[schema(nullable, example = 42)]
    pub seed: Option<u64>,
    #[schema(example = 1)]
    pub input_length: u32,
}

/// One SSE event of `/generate_stream`: a token; the last one also carries the whole text and
/// the details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StreamResponse {
    /// Position of this token in the generation, from 0.
    pub index: u32,
    pub token: Token,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_tokens: Vec<Token>,
    #[schema(nullable, default = json!(null), example = "test")]
    pub generated_text: Option<String>,
    #[schema(nullable, default = json!(null))]
    pub details: Option<StreamDetails>,
}

impl From<crate::generation::FinishReason> for FinishReason {
    fn from(reason: crate::generation::FinishReason) -> Self {
        use crate::generation::FinishReason as Domain;
        match reason {
            Domain::Length => Self::Length,
            Domain::EndOfSequenceToken => Self::EndOfSequenceToken,
            Domain::StopSequence => Self::StopSequence,
        }
    }
}

impl From<crate::generation::TextToken> for Token {
    fn from(token: crate::generation::TextToken) -> Self {
        Self {
            id: token.id,
            text: token.text,
            logprob: token.logprob,
            special: token.special,
        }
    }
}
