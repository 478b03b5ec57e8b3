//! The second half of a step for one request: the shard's answer for its chunk or decode
//! becomes events (PrefillDone, tokens, finish or error), confirmed tokens and an outcome
//! (still running, or leaving with or without a release in the shard).

use super::{Sequence, SequenceOutcome, FORGOTTEN, HELD_BY_SHARD};
use crate::proto;
use crate::scheduler::batcher::ChunkPlan;
use crate::scheduler::interface::{GenerationError, GenerationEvent, ShardFinish, Token};

impl Sequence {
    /// The second half of applying a step (see `expect_step`): the shard's result for this
    /// request's chunk (`chunk` is Some) or decode.
    pub fn apply_generation(
        &mut self,
        chunk: Option<&ChunkPlan>,
        generation: Option<proto::Generation>,
    ) -> SequenceOutcome {
        let is_last_chunk = match chunk {
            Some(chunk) => chunk.is_last_chunk,
            None => true,
        };
        let generation = match generation {
            Some(generation) if !generation.error.is_empty() => {
                self.fail(GenerationError::Shard(generation.error));
                return FORGOTTEN;
            }
            Some(generation) => generation,
            // A chunk that is not the last produces no token; the shard may omit it.
            None if !is_last_chunk => proto::Generation::default(),
            None => {
                self.fail(GenerationError::Shard(format!(
                    "the shard returned no result for request {}",
                    self.request_id
                )));
                return HELD_BY_SHARD;
            }
        };
        let finish = shard_finish(&generation);
        match chunk {
            Some(chunk) => {
                self.confirm(chunk.num_tokens);
                if !self.is_prefill_done_sent && self.parameters.prompt_logprobs {
                    self.prompt_logprobs
                        .extend_from_slice(&generation.prompt_logprobs);
                }
            }
            // The decode computed its input token and every accepted proposal: all but the
            // newest of the tokens it produced (pushed below). Proposals only come with
            // speculation, which never has a step in flight, so counting them here is exact.
            None => {
                let num_accepted = generation.tokens.len().saturating_sub(1);
                self.num_computed_tokens += num_accepted;
                self.confirm(1 + num_accepted);
            }
        }
        if !is_last_chunk {
            return self.outcome_of_send(true);
        }
        self.num_pending_tokens = self.num_pending_tokens.saturating_sub(1);
        self.is_decoding = true;
        self.trace.prefill_done();
        if !self.send_prefill_done() {
            return if finish.is_some() {
                FORGOTTEN
            } else {
                HELD_BY_SHARD
            };
        }
        self.push_tokens(generation.tokens, finish)
    }

    fn confirm(&mut self, num_tokens: usize) {
        self.num_confirmed_tokens =
            (self.num_confirmed_tokens + num_tokens).min(self.num_computed_tokens);
    }

    fn send_prefill_done(&mut self) -> bool {
        if self.is_prefill_done_sent {
            return true;
        }
        self.is_prefill_done_sent = true;
        let scheduled_at = self.first_scheduled_at.unwrap_or(self.received_at);
        let event = GenerationEvent::PrefillDone {
            prompt_logprobs: std::mem::take(&mut self.prompt_logprobs),
            queue_time: scheduled_at.saturating_duration_since(self.received_at),
        };
        self.events.send(event).is_ok()
    }

    fn push_tokens(
        &mut self,
        tokens: Vec<proto::GeneratedToken>,
        finish: Option<ShardFinish>,
    ) -> SequenceOutcome {
        if tokens.is_empty() {
            self.fail(GenerationError::Shard(format!(
                "the shard produced no token for request {}",
                self.request_id
            )));
            // Without a finish reason the shard still holds the request.
            return if finish.is_some() {
                FORGOTTEN
            } else {
                HELD_BY_SHARD
            };
        }
        let num_tokens = tokens.len();
        let mut is_delivered = true;
        for (index, generated) in tokens.into_iter().enumerate() {
            self.token_ids.push(generated.token_id);
            let token = Token {
                id: generated.token_id,
                logprob: generated.logprob,
                top_tokens: generated
                    .top_tokens
                    .iter()
                    .map(|top| (top.token_id, top.logprob))
                    .collect(),
            };
            let finish = if index + 1 == num_tokens {
                finish
            } else {
                None
            };
            is_delivered &= self
                .events
                .send(GenerationEvent::Token { token, finish })
                .is_ok();
        }
        match finish {
            Some(_) => FORGOTTEN,
            None => self.outcome_of_send(is_delivered),
        }
    }

    fn outcome_of_send(&self, is_delivered: bool) -> SequenceOutcome {
        if is_delivered && !self.is_cancelled() {
            SequenceOutcome::Running
        } else {
            HELD_BY_SHARD
        }
    }
}

fn shard_finish(generation: &proto::Generation) -> Option<ShardFinish> {
    match proto::FinishReason::try_from(generation.finish_reason) {
        Ok(proto::FinishReason::Eos) => Some(ShardFinish::Eos),
        Ok(proto::FinishReason::Length) => Some(ShardFinish::Length),
        Ok(proto::FinishReason::Unspecified) | Err(_) => None,
    }
}
