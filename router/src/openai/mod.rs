//! The OpenAI-compatible API (`/v1/chat/completions`, `/v1/completions`, `/v1/models`) on the
//! same scheduler and generation pipeline as TGI's routes. OpenAI's semantics where they
//! differ from TGI's: `temperature: 0` is greedy, `n` independent samples, the stop sequence
//! left out of the text, `logit_bias`, OpenAI's error shape and statuses.
//!
//! request → `parameters` (checks; `tools`: tools and tool_choice, the forced-call grammar) →
//! `prompt` (chat template / tokens, length budget; `tool_prompt`: tools and earlier calls for
//! the template) → `choices` (submit n × prompts, merge their events, drop stop text) → `run`
//! (whole answer, or an SSE stream shaped by `chat` / `completions`; with tools, a choice's
//! text becomes content or calls in `tool_stream`, calls parsed by `tool_parse`).

pub mod chat;
pub mod choices;
pub mod completions;
pub mod error;
pub mod logprobs;
pub mod models;
pub mod parameters;
pub mod prompt;
pub mod request;
pub mod response;
pub mod response_format;
pub mod run;
pub mod state;
pub mod template;
pub mod text;
pub mod tool_parse;
pub mod tool_prompt;
pub mod tool_stream;
pub mod tools;

use axum::routing::{get, post};
use axum::Router;

use crate::generation::FinishReason;
use crate::http::AppState;

pub use state::OpenAiState;

/// The OpenAI routes, merged into the app beside TGI's (behind the same API key check).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/models", get(models::list_models))
        .route("/v1/models/{model_id}", get(models::get_model))
}

/// OpenAI's finish reasons: `stop` for EOS and stop sequences alike.
pub fn finish_reason(finish: FinishReason) -> &'static str {
    match finish {
        FinishReason::Length => "length",
        FinishReason::EndOfSequenceToken | FinishReason::StopSequence => "stop",
    }
}

#[cfg(test)]
mod tests;
