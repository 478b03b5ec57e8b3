//! Turns an API request into a `ValidRequest`: parameters checked with TGI's rules, the prompt
//! tokenized once (off the async threads) and measured against the token limits.

pub mod adapter;
pub mod error;
pub mod grammar;
pub mod parameters;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokenizers::Encoding;

use crate::api::generate::GenerateRequest;
use crate::config::RequestLimits;
use crate::metrics::Metrics;
use crate::proto;
use crate::scheduler::interface::GenerationRequest;
use crate::tokenizer::TextTokenizer;
use grammar::GrammarCompiler;

pub use error::ValidationError;
pub use parameters::Delivery;

/// A request that passed validation: everything the generation pipeline needs.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    /// The prompt text as given (for `return_full_text`).
    pub inputs: String,
    /// The prompt's token ids after truncation.
    pub input_ids: Vec<u32>,
    /// What the shard gets (seed included when sampling).
    pub parameters: proto::RequestParameters,
    /// Reported in `details.seed`; None for greedy requests.
    pub seed: Option<u64>,
    pub best_of: usize,
    pub stop_sequences: Vec<String>,
    pub details: bool,
    pub decoder_input_details: bool,
    pub return_full_text: bool,
    pub received_at: Instant,
    /// Set by the route from the request's budget (`http::deadline`).
    pub deadline: Option<Instant>,
    pub validation_time: Duration,
}

impl ValidRequest {
    /// The scheduler's request for one candidate. Candidate `index` of a `best_of` request
    /// samples with its own seed (`seed + index`), so the candidates differ.
    pub fn generation_request(&self, index: usize) -> GenerationRequest {
        let mut parameters = self.parameters.clone();
        if let Some(sampling) = parameters.sampling.as_mut() {
            sampling.seed = sampling.seed.wrapping_add(index as u64);
        }
        GenerationRequest {
            input_ids: self.input_ids.clone(),
            parameters,
            received_at: self.received_at,
            deadline: self.deadline,
            // Called inside the request's span (telemetry::request_span).
            span: tracing::Span::current(),
        }
    }

    /// The seed candidate `index` samples with (see `generation_request`).
    pub fn candidate_seed(&self, index: usize) -> Option<u64> {
        self.seed.map(|seed| seed.wrapping_add(index as u64))
    }
}

#[derive(Clone)]
pub struct Validator {
    tokenizer: Arc<TextTokenizer>,
    limits: RequestLimits,
    grammars: Arc<dyn GrammarCompiler>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Validator")
            .field("limits", &self.limits)
            .finish()
    }
}

impl Validator {
    /// Grammars are accepted unchecked (tests); `with_grammars` gives the shard's compiler.
    pub fn new(tokenizer: Arc<TextTokenizer>, limits: RequestLimits) -> Self {
        let metrics = Arc::new(Metrics::default());
        Self::with_grammars(tokenizer, limits, grammar::accept_all(), metrics)
    }

    /// `metrics`: where grammar compilations are counted.
    pub fn with_grammars(
        tokenizer: Arc<TextTokenizer>,
        limits: RequestLimits,
        grammars: Arc<dyn GrammarCompiler>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            tokenizer,
            limits,
            grammars,
            metrics,
        }
    }

    /// Compiles the request's grammar in the shards (cached there by grammar); the error
    /// names why it cannot be used. The outcome is what metrics count.
    pub async fn compile_grammar(
        &self,
        grammar: &proto::Grammar,
    ) -> Result<proto::CompileGrammarResponse, ValidationError> {
        let answer = self
            .grammars
            .compile(grammar.clone())
            .await
            .map_err(ValidationError::Grammar)?;
        self.metrics.grammar.observe(&answer);
        if !answer.error.is_empty() {
            return Err(ValidationError::Grammar(answer.error));
        }
        Ok(answer)
    }

    pub fn limits(&self) -> &RequestLimits {
        &self.limits
    }

    #[tracing::instrument(name = "validation", skip_all)]
    pub async fn validate(
        &self,
        request: GenerateRequest,
        delivery: Delivery,
        received_at: Instant,
    ) -> Result<ValidRequest, ValidationError> {
        let checked = parameters::check_parameters(&request.parameters, &self.limits, delivery)?;
        if let Some(grammar) = &checked.sampling.grammar {
            self.compile_grammar(grammar).await?;
        }
        let encoding = self
            .tokenize(request.inputs.clone(), checked.truncate)
            .await?;
        let input_ids = encoding.get_ids().to_vec();
        let max_new_tokens = check_lengths(input_ids.len(), checked.max_new_tokens, &self.limits)?;
        let parameters = proto::RequestParameters {
            sampling: Some(checked.sampling),
            stopping: Some(proto::StoppingParameters {
                max_new_tokens,
                ignore_eos: false,
            }),
            top_n_tokens: checked.top_n_tokens,
            prompt_logprobs: checked.decoder_input_details,
            adapter_id: checked.adapter_id,
        };
        Ok(ValidRequest {
            inputs: request.inputs,
            input_ids,
            parameters,
            seed: checked.seed,
            best_of: checked.best_of,
            stop_sequences: checked.stop_sequences,
            details: request.parameters.details,
            decoder_input_details: checked.decoder_input_details,
            return_full_text: request.parameters.return_full_text.unwrap_or(false),
            received_at,
            deadline: None,
            validation_time: received_at.elapsed(),
        })
    }

    /// Tokenizes on a blocking thread: long prompts take milliseconds, which must not stall
    /// the threads serving streams.
    pub async fn tokenize(
        &self,
        inputs: String,
        truncate: Option<usize>,
    ) -> Result<Encoding, ValidationError> {
        if inputs.is_empty() {
            return Err(ValidationError::EmptyInput);
        }
        let tokenizer = Arc::clone(&self.tokenizer);
        tokio::task::spawn_blocking(move || tokenizer.encode(&inputs, truncate))
            .await
            .map_err(|join_error| ValidationError::Tokenizer(join_error.to_string()))?
            .map_err(|error| ValidationError::Tokenizer(error.to_string()))
    }
}

/// Checks the prompt length and returns `max_new_tokens`, which defaults to whatever room
/// `max_total_tokens` leaves.
pub fn check_lengths(
    input_tokens: usize,
    max_new_tokens: Option<u32>,
    limits: &RequestLimits,
) -> Result<u32, ValidationError> {
    if input_tokens > limits.max_input_tokens {
        let max_input_tokens = limits.max_input_tokens;
        return Err(ValidationError::InputLength {
            max_input_tokens,
            input_tokens,
        });
    }
    let room = limits.max_total_tokens.saturating_sub(input_tokens);
    let max_new_tokens = max_new_tokens.unwrap_or(u32::try_from(room).unwrap_or(u32::MAX));
    if input_tokens + max_new_tokens as usize > limits.max_total_tokens {
        return Err(ValidationError::MaxTotalTokens {
            max_total_tokens: limits.max_total_tokens,
            input_tokens,
            max_new_tokens,
        });
    }
    Ok(max_new_tokens)
}

#[cfg(test)]
mod tests;
