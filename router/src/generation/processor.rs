//! The per-request state machine between the scheduler and the API: each `GenerationEvent` in,
//! at most one `TokenStep` out. Pure apart from clocks and metrics, so it is tested without a
//! runtime.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::detokenize::IncrementalDetokenizer;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::scheduler::interface::{GenerationEvent, ShardFinish, Token};
use crate::stop::StopSequenceMatcher;
use crate::tokenizer::TextTokenizer;

use super::{FinishReason, GenerationContext, TextToken, TokenStep};

#[derive(Debug)]
pub struct TokenProcessor {
    tokenizer: Arc<TextTokenizer>,
    metrics: Arc<Metrics>,
    detokenizer: IncrementalDetokenizer,
    stop: StopSequenceMatcher,
    /// Text of the non-special tokens so far (cut at a matched stop sequence).
    generated_text: String,
    generated_tokens: u32,
    finish: Option<FinishReason>,
    prompt_logprobs: Vec<f32>,
    queue_time: Duration,
    received_at: Instant,
    first_token_at: Option<Instant>,
    last_token_at: Option<Instant>,
}

impl TokenProcessor {
    pub fn new(
        context: &GenerationContext,
        input_ids: &[u32],
        stop_sequences: Vec<String>,
        received_at: Instant,
    ) -> Self {
        Self {
            detokenizer: IncrementalDetokenizer::new(&context.tokenizer, input_ids),
            tokenizer: Arc::clone(&context.tokenizer),
            metrics: Arc::clone(&context.metrics),
            stop: StopSequenceMatcher::new(stop_sequences),
            generated_text: String::new(),
            generated_tokens: 0,
            finish: None,
            prompt_logprobs: Vec::new(),
            queue_time: Duration::ZERO,
            received_at,
            first_token_at: None,
            last_token_at: None,
        }
    }

    /// Handles one event; a token gives a `TokenStep`. Once `finish()` is set the caller drops
    /// the receiver (which cancels the request when a stop sequence ended it early).
    pub fn process(&mut self, event: GenerationEvent) -> Result<Option<TokenStep>, ApiError> {
        match event {
            GenerationEvent::PrefillDone {
                prompt_logprobs,
                queue_time,
            } => {
                self.prompt_logprobs = prompt_logprobs;
                self.queue_time = queue_time;
                self.metrics.observe_queue_wait(queue_time);
                Ok(None)
            }
            GenerationEvent::Token { token, finish } if self.finish.is_none() => {
                self.on_token(token, finish).map(Some)
            }
            GenerationEvent::Token { .. } => Ok(None),
            GenerationEvent::Error(error) => Err(ApiError::Generation(error)),
        }
    }

    fn on_token(
        &mut self,
        token: Token,
        finish: Option<ShardFinish>,
    ) -> Result<TokenStep, ApiError> {
        self.record_latency();
        let index = self.generated_tokens;
        self.generated_tokens += 1;
        self.finish = finish.map(|finish| match finish {
            ShardFinish::Eos => FinishReason::EndOfSequenceToken,
            ShardFinish::Length => FinishReason::Length,
        });
        let special = self.tokenizer.is_special(token.id);
        let text = if special {
            // Special tokens stay out of the text; a character still incomplete when the
            // generation ends is flushed into the text rather than lost.
            if self.finish.is_some() {
                let rest = self.detokenizer.flush(&self.tokenizer).map_err(internal)?;
                self.push_text(&rest);
            }
            self.tokenizer.token_text(token.id)
        } else {
            let mut piece = self
                .detokenizer
                .push(&self.tokenizer, token.id)
                .map_err(internal)?;
            if self.finish.is_some() {
                piece.push_str(&self.detokenizer.flush(&self.tokenizer).map_err(internal)?);
            }
            self.push_text(&piece)
        };
        let top_tokens = token
            .top_tokens
            .iter()
            .map(|&(id, logprob)| TextToken {
                id,
                text: self.tokenizer.token_text(id),
                logprob,
                special: self.tokenizer.is_special(id),
            })
            .collect();
        let token = TextToken {
            id: token.id,
            text,
            logprob: token.logprob,
            special,
        };
        Ok(TokenStep {
            index,
            token,
            top_tokens,
            finish: self.finish,
        })
    }

    /// Appends generated text, stopping at the end of a stop sequence; returns what was kept.
    fn push_text(&mut self, piece: &str) -> String {
        let kept = match self.stop.push(piece) {
            Some(hit) => {
                self.finish = Some(FinishReason::StopSequence);
                &piece[..hit.piece_end_bytes]
            }
            None => piece,
        };
        self.generated_text.push_str(kept);
        kept.to_string()
    }

    fn record_latency(&mut self) {
        let now = Instant::now();
        match self.last_token_at {
            None => {
                self.first_token_at = Some(now);
                self.metrics
                    .observe_time_to_first_token(now - self.received_at);
            }
            Some(previous) => self.metrics.observe_inter_token_latency(now - previous),
        }
        self.last_token_at = Some(now);
    }

    pub fn finish(&self) -> Option<FinishReason> {
        self.finish
    }

    pub fn generated_text(&self) -> &str {
        &self.generated_text
    }

    pub fn generated_tokens(&self) -> u32 {
        self.generated_tokens
    }

    pub fn prompt_logprobs(&self) -> &[f32] {
        &self.prompt_logprobs
    }

    pub fn queue_time(&self) -> Duration {
        self.queue_time
    }

    /// From arrival to the first token; None before it.
    pub fn time_to_first_token(&self) -> Option<Duration> {
        self.first_token_at
            .map(|at| at.saturating_duration_since(self.received_at))
    }
}

fn internal(error: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(format!("detokenization failed: {error}"))
}

#[cfg(test)]
mod tests;
