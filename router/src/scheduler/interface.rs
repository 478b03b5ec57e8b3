//! What the HTTP layer hands the scheduler, and what it gets back.
//!
//! The HTTP layer validates and tokenizes, then `submit`s a `GenerationRequest`; the scheduler
//! streams `GenerationEvent`s back on the returned channel. Dropping the receiver cancels the
//! request: the scheduler notices at its next step, releases the request's KV blocks and tells
//! the shard to forget it. Stop sequences are matched on text by the HTTP layer, which then
//! simply drops the receiver.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::proto;

/// A validated, tokenized request ready to be scheduled.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub input_ids: Vec<u32>,
    /// Sampling / stopping / logprob wishes, passed to the shard unchanged.
    pub parameters: proto::RequestParameters,
    /// When the HTTP layer accepted the request (queue time is measured from here).
    pub received_at: Instant,
}

/// One generated token as the shard reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub id: u32,
    pub logprob: f32,
    /// (token id, logprob), most likely first.
    pub top_tokens: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardFinish {
    Eos,
    Length,
}

#[derive(Debug, Clone)]
pub enum GenerationEvent {
    /// The prompt is fully computed. `prompt_logprobs` is aligned with the input ids (NaN for
    /// the first) when they were asked for, else empty.
    PrefillDone { prompt_logprobs: Vec<f32>, queue_time: Duration },
    /// A new token; `finish` is set on the last one.
    Token { token: Token, finish: Option<ShardFinish> },
    /// The request failed; no more events follow.
    Error(GenerationError),
}

/// Why an accepted request failed after admission (mapped to HTTP 424 by the error module).
#[derive(Debug, Clone, thiserror::Error)]
pub enum GenerationError {
    #[error("generation failed in the shard: {0}")]
    Shard(String),
    #[error("the request needs {needed_blocks} KV blocks but the cache only has {total_blocks}")]
    TooLargeForCache { needed_blocks: usize, total_blocks: usize },
}

/// Why `submit` refused a request (mapped to HTTP 429 / 503).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdmissionError {
    #[error("Model is overloaded: {max_waiting} requests are already waiting")]
    QueueFull { max_waiting: usize },
    #[error("the scheduler has stopped")]
    Stopped,
}

pub type EventReceiver = mpsc::UnboundedReceiver<GenerationEvent>;
