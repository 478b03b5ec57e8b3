//! The one log line per finished request. Written inside the request's span, so the line also
//! carries the request id (as `request{request_id=..}` in text, under `span` in JSON).

use crate::metrics::RequestRecord;

/// Where finished-request lines go: filter on it (`RUST_LOG=ferrite_router::request=off`).
pub const TARGET: &str = "ferrite_router::request";

pub fn finished(record: &RequestRecord) {
    tracing::info!(
        target: TARGET,
        input_tokens = record.input_tokens,
        generated_tokens = record.generated_tokens,
        max_new_tokens = record.max_new_tokens,
        validation_s = record.validation.as_secs_f64(),
        queue_s = record.queue.as_secs_f64(),
        time_to_first_token_s = record.time_to_first_token.as_secs_f64(),
        inference_s = record.inference.as_secs_f64(),
        total_s = record.total.as_secs_f64(),
        finish_reason = record.finish_reason,
        "request finished"
    );
}

pub fn failed(error_type: &'static str, error: &dyn std::fmt::Display) {
    tracing::info!(target: TARGET, error_type, error = %error, "request failed");
}
