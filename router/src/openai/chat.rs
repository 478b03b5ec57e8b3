//! `POST /v1/chat/completions`: messages through the model's chat template, `n` choices,
//! whole or streamed (`chat.completion` / `chat.completion.chunk`).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tracing::Instrument;

use crate::error::ApiError;
use crate::http::deadline::RequestBudget;
use crate::http::AppState;
use crate::tokenizer::TextTokenizer;

use super::choices::{Arrival, ChoiceSet, ChoiceUpdate};
use super::error::{body_rejection, ErrorBody, OpenAiError};
use super::finish_reason;
use super::logprobs::chat_entry;
use super::parameters::check_chat;
use super::prompt::{chat_prompt, template_messages, with_budget};
use super::request::ChatCompletionRequest;
use super::response::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk,
    ChatLogprobs, Delta, Header, Usage,
};
use super::run::{self, ChunkShaper, RequestTiming};
use super::state::{response_id, unix_now_s};

const ROLE: &str = "assistant";

/// OpenAI chat completions: the chat template renders the messages, then the model answers.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "OpenAI",
    request_body = ChatCompletionRequest,
    params(("x-request-timeout-s" = Option<f64>, Header, description = "Ask for a shorter time limit than the server's")),
    responses(
        (status = 200, description = "The completion", body = ChatCompletion),
        (status = 200, description = "Chunks (`stream: true`), `data: [DONE]` last", body = ChatCompletionChunk,
         content_type = "text/event-stream"),
        (status = 400, description = "Invalid parameter", body = ErrorBody),
        (status = 408, description = "Timed out while queued", body = ErrorBody),
        (status = 422, description = "Not supported, or no chat template", body = ErrorBody),
        (status = 424, description = "Generation error", body = ErrorBody),
        (status = 429, description = "Model is overloaded", body = ErrorBody),
        (status = 504, description = "Timed out while generating", body = ErrorBody),
    )
)]
pub async fn chat_completions(
    State(state): State<AppState>,
    budget: Result<RequestBudget, ApiError>,
    body: Result<Json<ChatCompletionRequest>, JsonRejection>,
) -> Response {
    run::respond(state, |state, received_at| {
        chat(state, budget, body, received_at)
    })
    .await
}

async fn chat(
    state: AppState,
    budget: Result<RequestBudget, ApiError>,
    body: Result<Json<ChatCompletionRequest>, JsonRejection>,
    received_at: Instant,
) -> Result<Response, OpenAiError> {
    let deadline = budget?.deadline(received_at);
    let tokenizer = Arc::clone(&state.generation.tokenizer);
    let limits = state.validator.limits();
    let (options, prompt) = async {
        let Json(request) = body.map_err(body_rejection)?;
        let options = check_chat(&request, limits, tokenizer.inner().get_vocab_size(true))?;
        if let Some(grammar) = &options.sampling.grammar {
            // A refused schema is a 422 naming the problem, as on the TGI routes.
            state.validator.compile_grammar(grammar).await?;
        }
        let template = state.openai.chat_template()?;
        let messages = template_messages(request.messages)?;
        let rendered = chat_prompt(Arc::clone(&tokenizer), template, messages).await?;
        let prompt = with_budget(rendered, options.max_tokens, limits, "messages")?;
        Ok::<_, OpenAiError>((options, prompt))
    }
    .instrument(tracing::info_span!("validation"))
    .await?;
    let timing = RequestTiming {
        received_at,
        validation: received_at.elapsed(),
        max_new_tokens: prompt.max_new_tokens,
    };
    let mut set = ChoiceSet::submit(
        state.submitter.as_ref(),
        &state.generation,
        &[prompt],
        &options,
        Arrival {
            received_at,
            deadline,
        },
    )?;
    let header = |object| Header {
        id: response_id("chatcmpl"),
        object,
        created: unix_now_s(),
        model: options.served_model(&state.info.model_id),
        system_fingerprint: state.openai.system_fingerprint.clone(),
    };
    let with_logprobs = options.logprobs.is_some();
    if options.stream {
        let shaper = ChatShaper {
            header: header("chat.completion.chunk"),
            tokenizer,
            with_logprobs,
            include_usage: options.include_usage,
            started: vec![false; set.len()],
        };
        return run::stream(state.clone(), set, shaper, options.include_usage, timing).await;
    }
    let per_choice = run::collect(&mut set).await?;
    run::succeeded(&state, &set, &timing);
    let choices = per_choice
        .iter()
        .enumerate()
        .map(|(index, updates)| whole_choice(&tokenizer, index as u32, updates, with_logprobs))
        .collect();
    let completion = ChatCompletion {
        header: header("chat.completion"),
        choices,
        usage: run::usage(&set),
    };
    Ok(Json(completion).into_response())
}

/// One choice of a whole answer: the concatenated updates.
pub fn whole_choice(
    tokenizer: &TextTokenizer,
    index: u32,
    updates: &[ChoiceUpdate],
    with_logprobs: bool,
) -> ChatChoice {
    let content = updates.iter().map(|update| update.text.as_str()).collect();
    let logprobs = with_logprobs.then(|| ChatLogprobs {
        content: updates
            .iter()
            .filter_map(|update| chat_entry(tokenizer, &update.step))
            .collect(),
    });
    let finish = updates.last().and_then(ChoiceUpdate::finish);
    ChatChoice {
        index,
        message: AssistantMessage {
            role: ROLE,
            content,
        },
        logprobs,
        finish_reason: finish.map_or("stop", finish_reason),
    }
}

/// Chunks of a chat stream: per choice, a first chunk with the role (empty content), a chunk
/// per released text (or logprob), and a chunk with the finish reason.
pub struct ChatShaper {
    pub header: Header,
    pub tokenizer: Arc<TextTokenizer>,
    pub with_logprobs: bool,
    pub include_usage: bool,
    /// Which choices already sent their role chunk.
    pub started: Vec<bool>,
}

impl ChatShaper {
    fn chunk(
        &self,
        index: u32,
        content: Option<String>,
        logprobs: Option<ChatLogprobs>,
        finish: Option<&'static str>,
    ) -> ChatCompletionChunk {
        ChatCompletionChunk {
            header: self.header.clone(),
            choices: vec![ChatChunkChoice {
                index,
                delta: Delta {
                    role: ROLE,
                    content,
                    tool_calls: None,
                },
                logprobs,
                finish_reason: finish,
            }],
            usage: self.include_usage.then_some(None),
        }
    }
}

impl ChunkShaper for ChatShaper {
    type Chunk = ChatCompletionChunk;

    fn chunks(
        &mut self,
        update: &ChoiceUpdate,
        _prompt_logprobs: &[f32],
    ) -> Vec<ChatCompletionChunk> {
        let mut chunks = Vec::new();
        let index = update.index;
        if let Some(started) = self.started.get_mut(index as usize) {
            if !*started {
                *started = true;
                chunks.push(self.chunk(index, Some(String::new()), None, None));
            }
        }
        let entry = if self.with_logprobs {
            chat_entry(&self.tokenizer, &update.step)
        } else {
            None
        };
        if !update.text.is_empty() || entry.is_some() {
            let logprobs = entry.map(|entry| ChatLogprobs {
                content: vec![entry],
            });
            chunks.push(self.chunk(index, Some(update.text.clone()), logprobs, None));
        }
        if let Some(finish) = update.finish() {
            chunks.push(self.chunk(index, None, None, Some(finish_reason(finish))));
        }
        chunks
    }

    fn usage_chunk(&self, usage: Usage) -> ChatCompletionChunk {
        ChatCompletionChunk {
            header: self.header.clone(),
            choices: Vec::new(),
            usage: Some(Some(usage)),
        }
    }
}
