//! OpenAI's parameter semantics and ranges, turned into the shard's sampling parameters.
//! They differ from TGI's (`temperature: 0` is greedy, `top_p: 1` is allowed, penalties are
//! OpenAI's additive ones, `logit_bias` exists), so they are checked here rather than by the
//! TGI validator; the prompt-length rules are shared (`validation::check_lengths`).

use std::collections::HashMap;

use crate::config::RequestLimits;
use crate::proto;

use super::error::OpenAiError;
use super::request::{ChatCompletionRequest, CommonParameters, CompletionRequest, StringOrList};
use super::response_format::response_grammar;
use super::tools::{check_tools, ToolUse};

/// Most choices one request may ask for (`n` × prompts); each is a scheduled sequence.
pub const MAX_CHOICES: usize = 64;
/// OpenAI's largest `top_logprobs` (the shard's own limit may be lower).
const MAX_TOP_LOGPROBS: u32 = 20;
const MAX_LOGIT_BIAS: f32 = 100.0;

/// Checked parameters shared by both endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOptions {
    /// Seed is the base seed: choice `i` samples with `seed + i`.
    pub sampling: proto::SamplingParameters,
    /// Choices per prompt.
    pub n: usize,
    /// As given (None: whatever room the context leaves).
    pub max_tokens: Option<u32>,
    pub stop_sequences: Vec<String>,
    /// Logprobs wanted: None for none, else how many alternatives per token.
    pub logprobs: Option<u32>,
    /// Logprobs of the prompt tokens too (completions with `echo` and `logprobs`).
    pub prompt_logprobs: bool,
    pub stream: bool,
    pub include_usage: bool,
    /// The LoRA adapter `model` names ("" for the base model).
    pub adapter_id: String,
}

impl GenerationOptions {
    /// The response's `model`: the adapter the request ran with, else the base model's id.
    pub fn served_model(&self, base_model_id: &str) -> String {
        if self.adapter_id.is_empty() {
            base_model_id.to_string()
        } else {
            self.adapter_id.clone()
        }
    }

    /// The shard's parameters for choice `choice_index` (its own seed) of a prompt.
    pub fn request_parameters(
        &self,
        max_new_tokens: u32,
        choice_index: usize,
    ) -> proto::RequestParameters {
        let mut sampling = self.sampling.clone();
        sampling.seed = sampling.seed.wrapping_add(choice_index as u64);
        proto::RequestParameters {
            sampling: Some(sampling),
            stopping: Some(proto::StoppingParameters {
                max_new_tokens,
                ignore_eos: false,
            }),
            top_n_tokens: self.logprobs.unwrap_or(0),
            prompt_logprobs: self.prompt_logprobs,
            adapter_id: self.adapter_id.clone(),
        }
    }
}

/// A chat request's checked options: how to generate, and the tools it may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatOptions {
    pub generation: GenerationOptions,
    /// None when the request uses no tools (none given, `[]`, `tool_choice: "none"`).
    pub tools: Option<ToolUse>,
}

pub fn check_chat(
    request: &ChatCompletionRequest,
    limits: &RequestLimits,
    vocab_size: usize,
) -> Result<ChatOptions, OpenAiError> {
    let tools = check_tools(request.tools.as_ref(), request.tool_choice.as_ref())?;
    let mut options = check_common(&request.common, limits, vocab_size)?;
    options.sampling.grammar = response_grammar(request.response_format.as_ref())?;
    if let Some(call_grammar) = tools.as_ref().and_then(ToolUse::grammar) {
        if options.sampling.grammar.is_some() {
            let message = "a `response_format` other than text cannot be combined with a \
                           `tool_choice` that forces a call (the answer is the call)";
            return Err(OpenAiError::invalid("response_format", message));
        }
        options.sampling.grammar = Some(call_grammar);
    }
    if request.max_completion_tokens.is_some() {
        options.max_tokens =
            check_max_tokens(request.max_completion_tokens, "max_completion_tokens")?;
    }
    options.logprobs = match (request.logprobs.unwrap_or(false), request.top_logprobs) {
        (false, Some(top)) if top > 0 => {
            return Err(OpenAiError::invalid(
                "top_logprobs",
                "`top_logprobs` requires `logprobs: true`",
            ));
        }
        (false, _) => None,
        (true, top) => Some(check_alternatives(
            "top_logprobs",
            top.unwrap_or(0),
            limits,
        )?),
    };
    Ok(ChatOptions {
        generation: options,
        tools,
    })
}

pub fn check_completion(
    request: &CompletionRequest,
    limits: &RequestLimits,
    vocab_size: usize,
) -> Result<GenerationOptions, OpenAiError> {
    if request
        .suffix
        .as_ref()
        .is_some_and(|suffix| !suffix.is_empty())
    {
        return Err(OpenAiError::NotSupported { param: "suffix" });
    }
    let mut options = check_common(&request.common, limits, vocab_size)?;
    if request
        .best_of
        .is_some_and(|best_of| best_of as usize != options.n)
    {
        return Err(OpenAiError::NotSupported { param: "best_of" });
    }
    // OpenAI's default for the legacy endpoint.
    options.max_tokens = options.max_tokens.or(Some(16));
    options.logprobs = match request.logprobs {
        Some(top) => Some(check_alternatives("logprobs", top, limits)?),
        None => None,
    };
    options.prompt_logprobs = request.echo.unwrap_or(false) && options.logprobs.is_some();
    if options.prompt_logprobs && !limits.supports_prompt_logprobs {
        let message = "`echo` with `logprobs` needs prompt logprobs, which this model's shard \
                       does not return";
        return Err(OpenAiError::invalid("echo", message));
    }
    Ok(options)
}

fn check_common(
    common: &CommonParameters,
    limits: &RequestLimits,
    vocab_size: usize,
) -> Result<GenerationOptions, OpenAiError> {
    let stream = common.stream.unwrap_or(false);
    if common.stream_options.is_some() && !stream {
        return Err(OpenAiError::invalid(
            "stream_options",
            "`stream_options` is only allowed when `stream` is true",
        ));
    }
    let n = common.n.unwrap_or(1) as usize;
    if n == 0 || n > MAX_CHOICES {
        return Err(OpenAiError::invalid(
            "n",
            format!("`n` must be between 1 and {MAX_CHOICES}. Given: {n}"),
        ));
    }
    let adapter_id = limits.adapters.resolve_model(common.model.as_deref())?;
    Ok(GenerationOptions {
        adapter_id,
        sampling: check_sampling(common, vocab_size)?,
        n,
        max_tokens: check_max_tokens(common.max_tokens, "max_tokens")?,
        stop_sequences: check_stop(common.stop.clone(), limits)?,
        logprobs: None,
        prompt_logprobs: false,
        stream,
        include_usage: common
            .stream_options
            .as_ref()
            .and_then(|options| options.include_usage)
            .unwrap_or(false),
    })
}

fn check_sampling(
    common: &CommonParameters,
    vocab_size: usize,
) -> Result<proto::SamplingParameters, OpenAiError> {
    let temperature = common.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(OpenAiError::invalid(
            "temperature",
            format!("`temperature` must be between 0 and 2. Given: {temperature}"),
        ));
    }
    let top_p = common.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(OpenAiError::invalid(
            "top_p",
            format!("`top_p` must be > 0 and <= 1. Given: {top_p}"),
        ));
    }
    let penalty = |param: &'static str, value: Option<f32>| {
        let value = value.unwrap_or(0.0);
        if (-2.0..=2.0).contains(&value) {
            Ok(value)
        } else {
            Err(OpenAiError::invalid(
                param,
                format!("`{param}` must be between -2 and 2. Given: {value}"),
            ))
        }
    };
    let do_sample = temperature > 0.0;
    // Sampled choices always carry a seed: choice i uses seed + i, so they differ.
    let (seed, has_seed) = match (common.seed, do_sample) {
        (Some(seed), _) => (seed as u64, true),
        (None, true) => (rand::random(), true),
        (None, false) => (0, false),
    };
    Ok(proto::SamplingParameters {
        do_sample,
        temperature: if do_sample { temperature } else { 1.0 },
        top_p,
        presence_penalty: penalty("presence_penalty", common.presence_penalty)?,
        frequency_penalty: penalty("frequency_penalty", common.frequency_penalty)?,
        seed,
        has_seed,
        logit_bias: check_logit_bias(common.logit_bias.as_ref(), vocab_size)?,
        ..Default::default()
    })
}

/// `{"token id": bias}` with ids in the vocabulary and biases in [-100, 100].
fn check_logit_bias(
    value: Option<&serde_json::Value>,
    vocab_size: usize,
) -> Result<HashMap<u32, f32>, OpenAiError> {
    let Some(value) = value else {
        return Ok(HashMap::new());
    };
    let Some(entries) = value.as_object() else {
        return Err(OpenAiError::invalid(
            "logit_bias",
            "`logit_bias` must be an object mapping token ids to biases",
        ));
    };
    entries
        .iter()
        .map(|(key, bias)| logit_bias_entry(key, bias, vocab_size))
        .collect()
}

fn logit_bias_entry(
    key: &str,
    bias: &serde_json::Value,
    vocab_size: usize,
) -> Result<(u32, f32), OpenAiError> {
    let id = key
        .parse::<u32>()
        .ok()
        .filter(|&id| (id as usize) < vocab_size);
    let Some(id) = id else {
        let message = format!("`logit_bias` key {key:?} is not a token id below {vocab_size}");
        return Err(OpenAiError::invalid("logit_bias", message));
    };
    let value = bias.as_f64().map(|value| value as f32);
    match value.filter(|value| value.abs() <= MAX_LOGIT_BIAS) {
        Some(value) => Ok((id, value)),
        None => {
            let message =
                format!("`logit_bias` values must be numbers between -100 and 100. Given: {bias}");
            Err(OpenAiError::invalid("logit_bias", message))
        }
    }
}

fn check_max_tokens(
    max_tokens: Option<u32>,
    param: &'static str,
) -> Result<Option<u32>, OpenAiError> {
    match max_tokens {
        Some(0) => Err(OpenAiError::invalid(
            param,
            format!("`{param}` must be at least 1"),
        )),
        other => Ok(other),
    }
}

fn check_stop(
    stop: Option<StringOrList>,
    limits: &RequestLimits,
) -> Result<Vec<String>, OpenAiError> {
    let stop = stop.map(StringOrList::into_vec).unwrap_or_default();
    if stop.len() > limits.max_stop_sequences {
        let message = format!(
            "`stop` takes at most {} sequences. Given: {}",
            limits.max_stop_sequences,
            stop.len()
        );
        return Err(OpenAiError::invalid("stop", message));
    }
    if stop.iter().any(String::is_empty) {
        return Err(OpenAiError::invalid(
            "stop",
            "`stop` sequences must not be empty strings",
        ));
    }
    Ok(stop)
}

fn check_alternatives(
    param: &'static str,
    top: u32,
    limits: &RequestLimits,
) -> Result<u32, OpenAiError> {
    let max = limits.max_top_n_tokens.min(MAX_TOP_LOGPROBS);
    if top > max {
        return Err(OpenAiError::invalid(
            param,
            format!("`{param}` must be between 0 and {max}. Given: {top}"),
        ));
    }
    Ok(top)
}

#[cfg(test)]
mod tests;
