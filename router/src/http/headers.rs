//! TGI's response headers: where the time went and how many tokens were involved.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

/// Timing and size of one finished request.
#[derive(Debug, Clone, Default)]
pub struct GenerationTimings {
    pub total: Duration,
    pub validation: Duration,
    pub queue: Duration,
    pub inference: Duration,
    pub prompt_tokens: usize,
    pub generated_tokens: u32,
    pub input_characters: usize,
}

impl GenerationTimings {
    /// Splits `total` into validation, queue and the rest (inference).
    pub fn new(total: Duration, validation: Duration, queue: Duration) -> Self {
        let inference = total.saturating_sub(validation + queue);
        Self {
            total,
            validation,
            queue,
            inference,
            ..Default::default()
        }
    }
}

/// Headers sent before a stream starts (sizes and times are not known yet).
pub fn stream_headers(compute_type: &str, prompt_tokens: usize) -> HeaderMap {
    let mut headers = HeaderMap::new();
    insert(&mut headers, "x-compute-type", compute_type.to_string());
    insert(&mut headers, "x-prompt-tokens", prompt_tokens.to_string());
    headers
}

pub fn generation_headers(compute_type: &str, timings: &GenerationTimings) -> HeaderMap {
    let time_per_token = match timings.generated_tokens {
        0 => Duration::ZERO,
        tokens => timings.inference / tokens,
    };
    let mut headers = stream_headers(compute_type, timings.prompt_tokens);
    let values = [
        (
            "x-compute-time",
            format!("{:.6}", timings.total.as_secs_f64()),
        ),
        ("x-compute-characters", timings.input_characters.to_string()),
        ("x-total-time", timings.total.as_millis().to_string()),
        (
            "x-validation-time",
            timings.validation.as_millis().to_string(),
        ),
        ("x-queue-time", timings.queue.as_millis().to_string()),
        (
            "x-inference-time",
            timings.inference.as_millis().to_string(),
        ),
        ("x-time-per-token", time_per_token.as_millis().to_string()),
        ("x-generated-tokens", timings.generated_tokens.to_string()),
    ];
    for (name, value) in values {
        insert(&mut headers, name, value);
    }
    headers
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}
