//! `POST /v1/completions`: one or more prompts (text or token ids), `n` choices each, `echo`,
//! legacy logprobs; whole or streamed (`text_completion`).

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

use super::choices::{Arrival, ChoiceSet, ChoiceUpdate, PreparedPrompt};
use super::error::{body_rejection, ErrorBody, OpenAiError};
use super::finish_reason;
use super::logprobs::CompletionLogprobsBuilder;
use super::parameters::{check_completion, GenerationOptions, MAX_CHOICES};
use super::prompt::{completion_prompts, with_budget};
use super::request::CompletionRequest;
use super::response::{Completion, CompletionChoice, CompletionLogprobs, Header, Usage};
use super::run::{self, ChunkShaper, RequestTiming};
use super::state::{response_id, unix_now_s};

/// OpenAI (legacy) completions of a raw prompt.
#[utoipa::path(
    post,
    path = "/v1/completions",
    tag = "OpenAI",
    request_body = CompletionRequest,
    params(("x-request-timeout-s" = Option<f64>, Header, description = "Ask for a shorter time limit than the server's")),
    responses(
        (status = 200, description = "The completion (or chunks with `stream: true`)", body = Completion),
        (status = 200, description = "Chunks (`stream: true`), `data: [DONE]` last", body = Completion,
         content_type = "text/event-stream"),
        (status = 400, description = "Invalid parameter", body = ErrorBody),
        (status = 408, description = "Timed out while queued", body = ErrorBody),
        (status = 422, description = "Not supported", body = ErrorBody),
        (status = 424, description = "Generation error", body = ErrorBody),
        (status = 429, description = "Model is overloaded", body = ErrorBody),
        (status = 504, description = "Timed out while generating", body = ErrorBody),
    )
)]
pub async fn completions(
    State(state): State<AppState>,
    budget: Result<RequestBudget, ApiError>,
    body: Result<Json<CompletionRequest>, JsonRejection>,
) -> Response {
    run::respond(state, |state, received_at| {
        complete(state, budget, body, received_at)
    })
    .await
}

async fn complete(
    state: AppState,
    budget: Result<RequestBudget, ApiError>,
    body: Result<Json<CompletionRequest>, JsonRejection>,
    received_at: Instant,
) -> Result<Response, OpenAiError> {
    let deadline = budget?.deadline(received_at);
    let tokenizer = Arc::clone(&state.generation.tokenizer);
    let limits = state.validator.limits();
    let (options, echo, prompts) = async {
        let Json(request) = body.map_err(body_rejection)?;
        let options = check_completion(&request, limits, tokenizer.inner().get_vocab_size(true))?;
        let echo = request.echo.unwrap_or(false);
        let texts_and_ids = completion_prompts(&state, request.prompt).await?;
        if texts_and_ids.len() > limits.max_client_batch_size {
            let message = format!(
                "Number of prompts exceeds the maximum allowed batch size of {}. Given: {}",
                limits.max_client_batch_size,
                texts_and_ids.len()
            );
            return Err(OpenAiError::invalid("prompt", message));
        }
        if texts_and_ids.len() * options.n > MAX_CHOICES {
            let message = format!(
                "prompts × `n` must be at most {MAX_CHOICES}. Given: {} × {}",
                texts_and_ids.len(),
                options.n
            );
            return Err(OpenAiError::invalid("n", message));
        }
        let prompts = texts_and_ids
            .into_iter()
            .map(|prompt| with_budget(prompt, options.max_tokens, limits, "prompt"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((options, echo, prompts))
    }
    .instrument(tracing::info_span!("validation"))
    .await?;
    let timing = RequestTiming {
        received_at,
        validation: received_at.elapsed(),
        max_new_tokens: prompts
            .iter()
            .map(|prompt| prompt.max_new_tokens)
            .max()
            .unwrap_or(0),
    };
    let mut set = ChoiceSet::submit(
        state.submitter.as_ref(),
        &state.generation,
        &prompts,
        &options,
        Arrival {
            received_at,
            deadline,
        },
    )?;
    let header = Header {
        id: response_id("cmpl"),
        object: "text_completion",
        created: unix_now_s(),
        model: options.served_model(&state.info.model_id),
        system_fingerprint: state.openai.system_fingerprint.clone(),
    };
    let mut shaper = CompletionShaper::new(header, tokenizer, &prompts, &options, echo);
    if options.stream {
        return run::stream(state.clone(), set, shaper, options.include_usage, timing).await;
    }
    let per_choice = run::collect(&mut set).await?;
    run::succeeded(&state, &set, &timing);
    let choices = per_choice
        .iter()
        .enumerate()
        .map(|(index, updates)| shaper.whole_choice(index, updates, set.prompt_logprobs(index)))
        .collect();
    let completion = Completion {
        header: shaper.header,
        choices,
        usage: Some(Some(run::usage(&set))),
    };
    Ok(Json(completion).into_response())
}

/// Shapes completion choices, whole or as stream chunks. With `echo`, a choice's text starts
/// with its prompt (a stream sends it first).
pub struct CompletionShaper {
    pub header: Header,
    tokenizer: Arc<TextTokenizer>,
    /// Per choice: its prompt (choice `p * n + j` answers prompt `p`).
    prompts: Vec<PreparedPrompt>,
    echo: bool,
    with_logprobs: bool,
    include_usage: bool,
    /// Per choice: its logprobs builder, created when the choice starts.
    builders: Vec<Option<CompletionLogprobsBuilder>>,
}

impl CompletionShaper {
    pub fn new(
        header: Header,
        tokenizer: Arc<TextTokenizer>,
        prompts: &[PreparedPrompt],
        options: &GenerationOptions,
        echo: bool,
    ) -> Self {
        let per_choice: Vec<PreparedPrompt> = prompts
            .iter()
            .flat_map(|prompt| std::iter::repeat_n(prompt.clone(), options.n))
            .collect();
        Self {
            header,
            tokenizer,
            builders: vec![None; per_choice.len()],
            prompts: per_choice,
            echo,
            with_logprobs: options.logprobs.is_some(),
            include_usage: options.include_usage,
        }
    }

    /// What a choice shows before its first token: its prompt with `echo`, else nothing.
    fn start(&mut self, index: usize, prompt_logprobs: &[f32]) -> (String, CompletionLogprobs) {
        let mut builder = CompletionLogprobsBuilder::default();
        let (mut text, mut logprobs) = (String::new(), CompletionLogprobs::default());
        if self.echo {
            let prompt = &self.prompts[index];
            text.push_str(&prompt.text);
            logprobs = builder.prompt(&self.tokenizer, &prompt.input_ids, prompt_logprobs);
        }
        self.builders[index] = Some(builder);
        (text, logprobs)
    }

    fn token_logprobs(&mut self, index: usize, update: &ChoiceUpdate) -> CompletionLogprobs {
        match self.builders[index].as_mut() {
            Some(builder) => builder.generated(&self.tokenizer, &update.step),
            None => CompletionLogprobs::default(),
        }
    }

    pub fn whole_choice(
        &mut self,
        index: usize,
        updates: &[ChoiceUpdate],
        prompt_logprobs: &[f32],
    ) -> CompletionChoice {
        let (mut text, mut logprobs) = self.start(index, prompt_logprobs);
        for update in updates {
            text.push_str(&update.text);
            let entry = self.token_logprobs(index, update);
            logprobs.extend(entry);
        }
        let finish = updates.last().and_then(ChoiceUpdate::finish);
        CompletionChoice {
            index: index as u32,
            text,
            logprobs: self.with_logprobs.then_some(logprobs),
            finish_reason: Some(finish.map_or("stop", finish_reason)),
        }
    }

    fn chunk(
        &self,
        index: usize,
        text: String,
        logprobs: Option<CompletionLogprobs>,
        finish: Option<&'static str>,
    ) -> Completion {
        let choice = CompletionChoice {
            index: index as u32,
            text,
            logprobs,
            finish_reason: finish,
        };
        Completion {
            header: self.header.clone(),
            choices: vec![choice],
            usage: self.include_usage.then_some(None),
        }
    }
}

impl ChunkShaper for CompletionShaper {
    type Chunk = Completion;

    fn chunks(&mut self, update: &ChoiceUpdate, prompt_logprobs: &[f32]) -> Vec<Completion> {
        let index = update.index as usize;
        let mut chunks = Vec::new();
        if self.builders.get(index).is_some_and(Option::is_none) {
            let (text, logprobs) = self.start(index, prompt_logprobs);
            if !text.is_empty() {
                chunks.push(self.chunk(index, text, self.with_logprobs.then_some(logprobs), None));
            }
        }
        let logprobs = self.token_logprobs(index, update);
        if !update.text.is_empty() || (self.with_logprobs && !logprobs.tokens.is_empty()) {
            let logprobs = self.with_logprobs.then_some(logprobs);
            chunks.push(self.chunk(index, update.text.clone(), logprobs, None));
        }
        if let Some(finish) = update.finish() {
            chunks.push(self.chunk(index, String::new(), None, Some(finish_reason(finish))));
        }
        chunks
    }

    fn usage_chunk(&self, usage: Usage) -> Completion {
        Completion {
            header: self.header.clone(),
            choices: Vec::new(),
            usage: Some(Some(usage)),
        }
    }
}
