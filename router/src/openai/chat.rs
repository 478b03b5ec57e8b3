//! `POST /v1/chat/completions`: messages (and tools) through the model's chat template, `n`
//! choices, whole or streamed (`chat.completion` / `chat.completion.chunk`); with tools, each
//! choice's text goes through `ToolCallStream` (content or `tool_calls`).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tracing::Instrument;

use crate::error::ApiError;
use crate::generation::FinishReason;
use crate::http::deadline::RequestBudget;
use crate::http::AppState;
use crate::tokenizer::TextTokenizer;
use crate::validation::ValidationError;

use super::choices::{Arrival, ChoiceSet, ChoiceUpdate, PreparedPrompt};
use super::error::{body_rejection, ErrorBody, OpenAiError};
use super::finish_reason;
use super::logprobs::chat_entry;
use super::parameters::{check_chat, ChatOptions};
use super::prompt::{chat_prompt, with_budget, Conversation};
use super::request::ChatCompletionRequest;
use super::response::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk,
    ChatLogprobs, Delta, Header, ToolCallDelta, Usage,
};
use super::run::{self, ChunkShaper, RequestTiming};
use super::state::{response_id, unix_now_s};
use super::tool_stream::{whole_answer, ToolCallStream, ToolPiece};
use super::tools::ToolUse;

const ROLE: &str = "assistant";
/// The finish reason of a choice that called tools.
const TOOL_CALLS: &str = "tool_calls";

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
    let (
        ChatOptions {
            generation: options,
            tools,
        },
        prompt,
    ) = prepare(&state, body)
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
            tool_streams: tools.map(|tools| vec![ToolCallStream::new(&tools); set.len()]),
        };
        return run::stream(state.clone(), set, shaper, options.include_usage, timing).await;
    }
    let per_choice = run::collect(&mut set).await?;
    run::succeeded(&state, &set, &timing);
    let choices = per_choice
        .iter()
        .enumerate()
        .map(|(index, updates)| {
            let choice = WholeChoice {
                index: index as u32,
                updates,
                with_logprobs,
                tools: tools.as_ref(),
            };
            whole_choice(&tokenizer, choice)
        })
        .collect();
    let completion = ChatCompletion {
        header: header("chat.completion"),
        choices,
        usage: run::usage(&set),
    };
    Ok(Json(completion).into_response())
}

/// The request checked, its grammar compiled (a refused schema is a 422 naming the problem,
/// as on the TGI routes; for a forced tool call, naming the tools) and its prompt rendered.
async fn prepare(
    state: &AppState,
    body: Result<Json<ChatCompletionRequest>, JsonRejection>,
) -> Result<(ChatOptions, PreparedPrompt), OpenAiError> {
    let tokenizer = Arc::clone(&state.generation.tokenizer);
    let limits = state.validator.limits();
    let Json(request) = body.map_err(body_rejection)?;
    let checked = check_chat(&request, limits, tokenizer.inner().get_vocab_size(true))?;
    if let Some(grammar) = &checked.generation.sampling.grammar {
        let compiled = state.validator.compile_grammar(grammar).await;
        if let (Err(ValidationError::Grammar(reason)), Some(tools)) = (&compiled, &checked.tools) {
            return Err(tools.refused(reason));
        }
        compiled?;
    }
    let template = state.openai.chat_template()?;
    let conversation = Conversation {
        messages: request.messages,
        tools: checked.tools.clone(),
        tool_prompt: request.tool_prompt,
    };
    let rendered = chat_prompt(tokenizer, template, conversation).await?;
    let prompt = with_budget(rendered, checked.generation.max_tokens, limits, "messages")?;
    Ok((checked, prompt))
}

/// One choice of a whole answer, and what shapes it.
pub struct WholeChoice<'a> {
    pub index: u32,
    pub updates: &'a [ChoiceUpdate],
    pub with_logprobs: bool,
    pub tools: Option<&'a ToolUse>,
}

/// One choice of a whole answer: the concatenated updates (content, or tool calls).
pub fn whole_choice(tokenizer: &TextTokenizer, choice: WholeChoice<'_>) -> ChatChoice {
    let WholeChoice {
        index,
        updates,
        with_logprobs,
        tools,
    } = choice;
    let text: String = updates.iter().map(|update| update.text.as_str()).collect();
    let logprobs = with_logprobs.then(|| ChatLogprobs {
        content: updates
            .iter()
            .filter_map(|update| chat_entry(tokenizer, &update.step))
            .collect(),
    });
    let finish = updates.last().and_then(ChoiceUpdate::finish);
    let mut finish_reason = finish.map_or("stop", finish_reason);
    let message = match tools {
        None => AssistantMessage {
            role: ROLE,
            content: Some(text),
            tool_calls: None,
        },
        Some(tools) => {
            let answer = whole_answer(tools, &text, finish.unwrap_or(FinishReason::Length));
            let called = !answer.tool_calls.is_empty();
            if called && finish_reason != "length" {
                finish_reason = TOOL_CALLS;
            }
            AssistantMessage {
                role: ROLE,
                content: answer.content,
                tool_calls: called.then_some(answer.tool_calls),
            }
        }
    };
    ChatChoice {
        index,
        message,
        logprobs,
        finish_reason,
    }
}

/// Chunks of a chat stream: per choice, a first chunk with the role (empty content; null
/// content with tools), a chunk per released text (or logprob) or tool-call piece, and a chunk
/// with the finish reason.
pub struct ChatShaper {
    pub header: Header,
    pub tokenizer: Arc<TextTokenizer>,
    pub with_logprobs: bool,
    pub include_usage: bool,
    /// Which choices already sent their role chunk.
    pub started: Vec<bool>,
    /// With tools: each choice's text goes through its own stream machine.
    pub tool_streams: Option<Vec<ToolCallStream>>,
}

impl ChatShaper {
    fn chunk(
        &self,
        index: u32,
        delta: Delta,
        logprobs: Option<ChatLogprobs>,
        finish: Option<&'static str>,
    ) -> ChatCompletionChunk {
        ChatCompletionChunk {
            header: self.header.clone(),
            choices: vec![ChatChunkChoice {
                index,
                delta,
                logprobs,
                finish_reason: finish,
            }],
            usage: self.include_usage.then_some(None),
        }
    }

    /// The deltas an update adds (its text, or the pieces its tool stream lets out), and
    /// whether the choice has called tools so far.
    fn deltas(&mut self, update: &ChoiceUpdate) -> (Vec<Delta>, bool) {
        let stream = self
            .tool_streams
            .as_mut()
            .and_then(|streams| streams.get_mut(update.index as usize));
        let Some(stream) = stream else {
            let text = (!update.text.is_empty()).then(|| update.text.clone());
            return (text.map(content_delta).into_iter().collect(), false);
        };
        let mut pieces = stream.push(&update.text);
        if let Some(finish) = update.finish() {
            pieces.extend(stream.finish(finish));
        }
        let deltas = pieces
            .into_iter()
            .map(|piece| match piece {
                ToolPiece::Content(text) => content_delta(text),
                ToolPiece::Call(call) => call_delta(call),
            })
            .collect();
        (deltas, stream.called())
    }
}

fn content_delta(content: String) -> Delta {
    Delta {
        role: ROLE,
        content: Some(content),
        tool_calls: None,
    }
}

fn call_delta(call: ToolCallDelta) -> Delta {
    Delta {
        role: ROLE,
        content: None,
        tool_calls: Some(vec![call]),
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
        let with_tools = self.tool_streams.is_some();
        if let Some(started) = self.started.get_mut(index as usize) {
            if !*started {
                *started = true;
                // OpenAI's first chunk of a tool call has null content.
                let content = (!with_tools).then(String::new);
                let role = Delta {
                    role: ROLE,
                    content,
                    tool_calls: None,
                };
                chunks.push(self.chunk(index, role, None, None));
            }
        }
        let entry = if self.with_logprobs {
            chat_entry(&self.tokenizer, &update.step)
        } else {
            None
        };
        let mut logprobs = entry.map(|entry| ChatLogprobs {
            content: vec![entry],
        });
        let (mut deltas, called) = self.deltas(update);
        if deltas.is_empty() && logprobs.is_some() {
            // A token whose text is held back still reports its logprob.
            deltas.push(Delta {
                role: ROLE,
                content: (!with_tools).then(String::new),
                tool_calls: None,
            });
        }
        for delta in deltas {
            chunks.push(self.chunk(index, delta, logprobs.take(), None));
        }
        if let Some(finish) = update.finish() {
            let reason = match finish {
                FinishReason::Length => finish_reason(finish),
                _ if called => TOOL_CALLS,
                _ => finish_reason(finish),
            };
            let end = Delta {
                role: ROLE,
                content: None,
                tool_calls: None,
            };
            chunks.push(self.chunk(index, end, None, Some(reason)));
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
