//! Checks of the generation parameters that do not need the prompt's tokens, and their
//! translation into the shard's `SamplingParameters` (TGI's rules and ranges).

use crate::api::generate::GenerateParameters;
use crate::config::RequestLimits;
use crate::proto;

use super::error::ValidationError;

/// How the answer is delivered; streaming forbids `best_of` and prompt details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Complete,
    Stream,
}

/// Parameters that passed every check that does not depend on the prompt length.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedParameters {
    pub sampling: proto::SamplingParameters,
    /// Reported in `details.seed`: the (given or drawn) seed when sampling, None when greedy.
    pub seed: Option<u64>,
    pub best_of: usize,
    /// As given; the default depends on the prompt length.
    pub max_new_tokens: Option<u32>,
    pub truncate: Option<usize>,
    pub top_n_tokens: u32,
    pub decoder_input_details: bool,
    pub stop_sequences: Vec<String>,
    /// The LoRA adapter to run with ("" for the base model).
    pub adapter_id: String,
}

pub fn check_parameters(
    parameters: &GenerateParameters,
    limits: &RequestLimits,
    delivery: Delivery,
) -> Result<CheckedParameters, ValidationError> {
    let adapter_id = limits.adapters.resolve(parameters.adapter_id.as_deref())?;
    let best_of = check_best_of(parameters, limits, delivery)?;
    let sampling = check_sampling(parameters)?;
    if parameters.max_new_tokens == Some(0) {
        return Err(ValidationError::MaxNewTokens);
    }
    if let Some(truncate) = parameters.truncate {
        if truncate == 0 || truncate > limits.max_input_tokens {
            let max_input_tokens = limits.max_input_tokens;
            return Err(ValidationError::Truncate {
                max_input_tokens,
                given: truncate,
            });
        }
    }
    let top_n_tokens = parameters.top_n_tokens.unwrap_or(0);
    if top_n_tokens > limits.max_top_n_tokens {
        let max_top_n_tokens = limits.max_top_n_tokens;
        return Err(ValidationError::TopNTokens {
            max_top_n_tokens,
            given: top_n_tokens,
        });
    }
    check_decoder_input_details(parameters, limits, delivery)?;
    check_stop_sequences(&parameters.stop, limits)?;
    let seed = sampling.do_sample.then_some(sampling.seed);
    Ok(CheckedParameters {
        sampling,
        seed,
        best_of,
        max_new_tokens: parameters.max_new_tokens,
        truncate: parameters.truncate,
        top_n_tokens,
        decoder_input_details: parameters.decoder_input_details,
        stop_sequences: parameters.stop.clone(),
        adapter_id,
    })
}

/// TGI's rule: any sampling knob set means sampling, even without `do_sample`.
pub fn implies_sampling(parameters: &GenerateParameters) -> bool {
    parameters.do_sample
        || parameters.temperature.is_some()
        || parameters.top_k.is_some()
        || parameters.top_p.is_some()
        || parameters.typical_p.is_some()
}

fn check_best_of(
    parameters: &GenerateParameters,
    limits: &RequestLimits,
    delivery: Delivery,
) -> Result<usize, ValidationError> {
    let best_of = parameters.best_of.unwrap_or(1);
    if best_of == 0 || best_of > limits.max_best_of {
        return Err(ValidationError::BestOf {
            max_best_of: limits.max_best_of,
            given: best_of,
        });
    }
    if best_of > 1 {
        if delivery == Delivery::Stream {
            return Err(ValidationError::BestOfStream);
        }
        if !implies_sampling(parameters) {
            return Err(ValidationError::BestOfSampling);
        }
        if parameters.seed.is_some() {
            return Err(ValidationError::BestOfSeed);
        }
    }
    Ok(best_of)
}

fn check_sampling(
    parameters: &GenerateParameters,
) -> Result<proto::SamplingParameters, ValidationError> {
    let temperature = parameters.temperature.unwrap_or(1.0);
    if temperature <= 0.0 || !temperature.is_finite() {
        return Err(ValidationError::Temperature);
    }
    let repetition_penalty = parameters.repetition_penalty.unwrap_or(1.0);
    if repetition_penalty <= 0.0 || !repetition_penalty.is_finite() {
        return Err(ValidationError::RepetitionPenalty);
    }
    let frequency_penalty = parameters.frequency_penalty.unwrap_or(0.0);
    if !(-2.0..=2.0).contains(&frequency_penalty) {
        return Err(ValidationError::FrequencyPenalty);
    }
    let in_open_unit_interval = |value: f32| value > 0.0 && value < 1.0;
    if parameters
        .top_p
        .is_some_and(|top_p| !in_open_unit_interval(top_p))
    {
        return Err(ValidationError::TopP);
    }
    if parameters
        .typical_p
        .is_some_and(|typical_p| !in_open_unit_interval(typical_p))
    {
        return Err(ValidationError::TypicalP);
    }
    let top_k = match parameters.top_k {
        Some(top_k) if top_k <= 0 => return Err(ValidationError::TopK),
        Some(top_k) => top_k.unsigned_abs(),
        None => 0,
    };
    let do_sample = implies_sampling(parameters);
    // Sampled requests always carry a seed so `details.seed` can report it and the request
    // can be replayed; greedy ones need none.
    let seed = match (do_sample, parameters.seed) {
        (_, Some(seed)) => seed,
        (true, None) => rand::random(),
        (false, None) => 0,
    };
    Ok(proto::SamplingParameters {
        do_sample,
        temperature,
        top_k,
        top_p: parameters.top_p.unwrap_or(1.0),
        typical_p: parameters.typical_p.unwrap_or(1.0),
        repetition_penalty,
        frequency_penalty,
        seed,
        has_seed: do_sample || parameters.seed.is_some(),
        watermark: parameters.watermark,
        grammar: parameters
            .grammar
            .as_ref()
            .map(|grammar| grammar.to_proto()),
        ..Default::default()
    })
}

fn check_decoder_input_details(
    parameters: &GenerateParameters,
    limits: &RequestLimits,
    delivery: Delivery,
) -> Result<(), ValidationError> {
    if !parameters.decoder_input_details {
        return Ok(());
    }
    if delivery == Delivery::Stream {
        return Err(ValidationError::PrefillDetailsStream);
    }
    if !limits.supports_prompt_logprobs {
        return Err(ValidationError::PrefillDetailsUnsupported);
    }
    Ok(())
}

fn check_stop_sequences(stop: &[String], limits: &RequestLimits) -> Result<(), ValidationError> {
    if stop.len() > limits.max_stop_sequences {
        let max_stop_sequences = limits.max_stop_sequences;
        return Err(ValidationError::StopSequences {
            max_stop_sequences,
            given: stop.len(),
        });
    }
    if stop.iter().any(String::is_empty) {
        return Err(ValidationError::EmptyStopSequence);
    }
    Ok(())
}
