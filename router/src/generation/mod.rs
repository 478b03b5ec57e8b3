//! From scheduler events to text, independent of the API's wire shapes: detokenization, stop
//! sequences, finish reasons, per-token latency metrics (`processor.rs`), and running a request
//! (or its `best_of` candidates) to completion (`complete.rs`). TGI's routes and, later, the
//! OpenAI routes both build on it.

pub mod complete;
pub mod processor;

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::tokenizer::TextTokenizer;

pub use complete::{generate, BestOf, CompletedGeneration};
pub use processor::TokenProcessor;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// Reached `max_new_tokens`.
    Length,
    /// The model produced an end-of-sequence token.
    EndOfSequenceToken,
    /// The text contains a stop sequence; the request was cancelled there.
    StopSequence,
}

impl FinishReason {
    /// TGI's wire name (`details.finish_reason`), also used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::EndOfSequenceToken => "eos_token",
            FinishReason::StopSequence => "stop_sequence",
        }
    }
}

/// A token with its text. `text` is what the token adds to the output: empty while a
/// multi-byte character is incomplete, cut at the end of a matched stop sequence; for special
/// tokens, the token's content (not part of the generated text).
#[derive(Debug, Clone, PartialEq)]
pub struct TextToken {
    pub id: u32,
    pub text: String,
    pub logprob: f32,
    pub special: bool,
}

/// One generated token as the API layers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenStep {
    /// Position in the generation, from 0.
    pub index: u32,
    pub token: TextToken,
    /// Most likely alternatives (each decoded on its own), most likely first.
    pub top_tokens: Vec<TextToken>,
    /// Set on the last token.
    pub finish: Option<FinishReason>,
}

/// What every request's pipeline shares.
#[derive(Debug, Clone)]
pub struct GenerationContext {
    pub tokenizer: Arc<TextTokenizer>,
    pub metrics: Arc<Metrics>,
}
