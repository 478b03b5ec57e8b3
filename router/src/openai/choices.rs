//! The choices of one OpenAI request (`n` per prompt, each an independent scheduled sequence)
//! run side by side. Events of all choices are merged in arrival order, each goes through the
//! shared generation pipeline (`TokenProcessor`: detokenization, stop sequences, metrics) and
//! then through OpenAI's stop-text rule. Streaming and whole answers consume the same updates.
//!
//! Dropping the set drops every event receiver, which cancels the unfinished sequences; a
//! choice ended by a stop sequence is cancelled as soon as it ends.

use std::future::poll_fn;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::error::ApiError;
use crate::generation::{FinishReason, GenerationContext, TokenProcessor, TokenStep};
use crate::scheduler::interface::{
    EventReceiver, GenerationEvent, GenerationRequest, RequestSubmitter,
};

use super::error::OpenAiError;
use super::parameters::GenerationOptions;
use super::text::StopTextFilter;

/// When a request arrived and by when it must be done.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub received_at: Instant,
    pub deadline: Option<Instant>,
}

/// A tokenized prompt with its token budget.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedPrompt {
    pub input_ids: Vec<u32>,
    /// The prompt as text (what `echo` shows).
    pub text: String,
    pub max_new_tokens: u32,
}

/// What one step of one choice adds to the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceUpdate {
    pub index: u32,
    /// Content released by this step (may be empty while a possible stop sequence is held).
    pub text: String,
    pub step: TokenStep,
}

impl ChoiceUpdate {
    pub fn finish(&self) -> Option<FinishReason> {
        self.step.finish
    }
}

struct Choice {
    /// None once the choice finished (dropping the receiver cancels the sequence).
    events: Option<EventReceiver>,
    processor: TokenProcessor,
    filter: StopTextFilter,
    /// Bytes of the processor's generated text already passed to `filter`.
    seen_text_bytes: usize,
}

pub struct ChoiceSet {
    choices: Vec<Choice>,
    prompt_tokens: u32,
    /// Where the next poll starts, so one busy choice cannot starve the others.
    next_poll: usize,
}

impl ChoiceSet {
    /// Submits `n` choices per prompt; choice `p * n + j` is sample `j` of prompt `p` (OpenAI's
    /// numbering). A refusal cancels the choices already queued.
    pub fn submit(
        submitter: &dyn RequestSubmitter,
        context: &GenerationContext,
        prompts: &[PreparedPrompt],
        options: &GenerationOptions,
        arrival: Arrival,
    ) -> Result<Self, OpenAiError> {
        let Arrival {
            received_at,
            deadline,
        } = arrival;
        let mut choices = Vec::with_capacity(prompts.len() * options.n);
        for prompt in prompts {
            for sample in 0..options.n {
                let request = GenerationRequest {
                    input_ids: prompt.input_ids.clone(),
                    parameters: options.request_parameters(prompt.max_new_tokens, sample),
                    received_at,
                    deadline,
                    span: tracing::Span::current(),
                };
                let events = submitter.submit(request)?;
                choices.push(Choice {
                    events: Some(events),
                    processor: TokenProcessor::new(
                        context,
                        &prompt.input_ids,
                        options.stop_sequences.clone(),
                        received_at,
                    ),
                    filter: StopTextFilter::new(options.stop_sequences.clone()),
                    seen_text_bytes: 0,
                });
            }
        }
        let prompt_tokens = prompts
            .iter()
            .map(|prompt| prompt.input_ids.len() as u32)
            .sum();
        Ok(Self {
            choices,
            prompt_tokens,
            next_poll: 0,
        })
    }

    /// The next token of any choice; None once every choice finished.
    pub async fn next(&mut self) -> Option<Result<ChoiceUpdate, OpenAiError>> {
        loop {
            let (index, event) = poll_fn(|cx| self.poll_event(cx)).await?;
            let Some(event) = event else {
                // The scheduler dropped the request without a last token.
                self.choices[index].events = None;
                return Some(Err(ApiError::IncompleteGeneration.into()));
            };
            match self.on_event(index, event) {
                Ok(Some(update)) => return Some(Ok(update)),
                Ok(None) => continue,
                Err(error) => return Some(Err(error.into())),
            }
        }
    }

    fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<(usize, Option<GenerationEvent>)>> {
        let count = self.choices.len();
        let mut any_running = false;
        for offset in 0..count {
            let index = (self.next_poll + offset) % count;
            let Some(events) = self.choices[index].events.as_mut() else {
                continue;
            };
            any_running = true;
            if let Poll::Ready(event) = events.poll_recv(cx) {
                self.next_poll = (index + 1) % count;
                return Poll::Ready(Some((index, event)));
            }
        }
        if any_running {
            Poll::Pending
        } else {
            Poll::Ready(None)
        }
    }

    fn on_event(
        &mut self,
        index: usize,
        event: GenerationEvent,
    ) -> Result<Option<ChoiceUpdate>, ApiError> {
        let choice = &mut self.choices[index];
        let Some(step) = choice.processor.process(event)? else {
            return Ok(None);
        };
        // The processor's text is the source of truth: it also holds bytes flushed at the end.
        let generated = choice.processor.generated_text();
        let piece = &generated[choice.seen_text_bytes..];
        choice.seen_text_bytes = generated.len();
        let text = choice.filter.push(piece, step.finish);
        if step.finish.is_some() {
            choice.events = None;
        }
        Ok(Some(ChoiceUpdate {
            index: index as u32,
            text,
            step,
        }))
    }

    pub fn len(&self) -> usize {
        self.choices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.choices.is_empty()
    }

    /// Prompt tokens (each prompt once, however many choices it has).
    pub fn prompt_tokens(&self) -> u32 {
        self.prompt_tokens
    }

    /// Tokens generated so far over all choices.
    pub fn completion_tokens(&self) -> u32 {
        self.choices
            .iter()
            .map(|choice| choice.processor.generated_tokens())
            .sum()
    }

    /// Prompt logprobs of choice `index` (aligned with its input ids, NaN first), when asked.
    pub fn prompt_logprobs(&self, index: usize) -> &[f32] {
        self.choices
            .get(index)
            .map_or(&[], |choice| choice.processor.prompt_logprobs())
    }

    /// The shortest time to a first token over the choices.
    pub fn time_to_first_token(&self) -> Duration {
        self.choices
            .iter()
            .filter_map(|choice| choice.processor.time_to_first_token())
            .min()
            .unwrap_or_default()
    }

    /// Why the first choice ended (None while it runs).
    pub fn first_finish_reason(&self) -> Option<FinishReason> {
        self.choices
            .first()
            .and_then(|choice| choice.processor.finish())
    }

    /// The longest time a choice waited for admission.
    pub fn queue_time(&self) -> Duration {
        self.choices
            .iter()
            .map(|choice| choice.processor.queue_time())
            .max()
            .unwrap_or_default()
    }
}
