//! Tensor-parallel ranks must agree: every rank receives the same call and runs the same step,
//! so their answers describe the same batch. The router reads rank 0's answer and checks the
//! others against it; a rank that disagrees has fallen out of step (its state diverged), which
//! is a shard failure like a failed call.
//!
//! Compared: what the router acts on (request ids, token ids, finish reasons, rejections, KV
//! block counts, model facts). Not compared: per-rank facts (device, memory, timings) and
//! floating-point logprobs (equal in practice, but NaN != NaN).

use crate::proto;

use super::ShardError;

/// How an answer of one rank is checked against rank 0's.
pub trait RankAgreement {
    /// `None` when `other` agrees with `self` (rank 0's answer), else what differs.
    fn disagreement(&self, other: &Self) -> Option<String>;
}

/// Checks every rank's answer against rank 0's (`answers[0]`).
pub fn check<T: RankAgreement>(answers: &[T]) -> Result<(), ShardError> {
    let Some((rank0, others)) = answers.split_first() else {
        return Ok(());
    };
    for (index, answer) in others.iter().enumerate() {
        if let Some(difference) = rank0.disagreement(answer) {
            return Err(ShardError::Disagreement(format!(
                "rank {} differs from rank 0: {difference}",
                index + 1
            )));
        }
    }
    Ok(())
}

impl RankAgreement for proto::InfoResponse {
    fn disagreement(&self, other: &Self) -> Option<String> {
        // Everything but the device (cuda:0, cuda:1, ...) describes the one model.
        let comparable = |info: &Self| proto::InfoResponse {
            device: String::new(),
            ..info.clone()
        };
        (comparable(self) != comparable(other)).then(|| {
            format!(
                "model facts differ (rank 0: {} {} {} world size {}, other: {} {} {} world size {})",
                self.model_id,
                self.architecture,
                self.dtype,
                self.world_size,
                other.model_id,
                other.architecture,
                other.dtype,
                other.world_size
            )
        })
    }
}

impl RankAgreement for proto::WarmupResponse {
    fn disagreement(&self, other: &Self) -> Option<String> {
        // One block table per request serves every rank: the block counts must be equal.
        (self.num_blocks != other.num_blocks
            || self.max_supported_total_tokens != other.max_supported_total_tokens)
            .then(|| {
                format!(
                    "KV blocks differ ({} vs {})",
                    self.num_blocks, other.num_blocks
                )
            })
    }
}

impl RankAgreement for proto::StepResponse {
    fn disagreement(&self, other: &Self) -> Option<String> {
        if self.generations.len() != other.generations.len() {
            return Some(format!(
                "{} generations vs {}",
                self.generations.len(),
                other.generations.len()
            ));
        }
        self.generations
            .iter()
            .zip(&other.generations)
            .find_map(|(mine, theirs)| generation_disagreement(mine, theirs))
    }
}

fn generation_disagreement(mine: &proto::Generation, theirs: &proto::Generation) -> Option<String> {
    let id = mine.request_id;
    if id != theirs.request_id {
        return Some(format!(
            "request ids differ ({id} vs {})",
            theirs.request_id
        ));
    }
    let token_ids = |generation: &proto::Generation| -> Vec<u32> {
        generation
            .tokens
            .iter()
            .map(|token| token.token_id)
            .collect()
    };
    if token_ids(mine) != token_ids(theirs) {
        return Some(format!(
            "request {id}: tokens differ ({:?} vs {:?})",
            token_ids(mine),
            token_ids(theirs)
        ));
    }
    if mine.finish_reason != theirs.finish_reason {
        return Some(format!("request {id}: finish reasons differ"));
    }
    if mine.error.is_empty() != theirs.error.is_empty() {
        return Some(format!("request {id}: rejected by only some ranks"));
    }
    if mine.prompt_logprobs.len() != theirs.prompt_logprobs.len() {
        return Some(format!("request {id}: prompt logprob counts differ"));
    }
    None
}

/// Answers without content always agree.
macro_rules! always_agree {
    ($($message:ty),*) => {
        $(impl RankAgreement for $message {
            fn disagreement(&self, _: &Self) -> Option<String> {
                None
            }
        })*
    };
}

always_agree!(
    proto::HealthResponse,
    proto::FilterResponse,
    proto::ClearResponse
);

/// Ranks compile the same grammar for the same vocabulary; whether it compiled must agree.
impl RankAgreement for proto::CompileGrammarResponse {
    fn disagreement(&self, other: &Self) -> Option<String> {
        (self.error != other.error).then(|| {
            format!(
                "grammar errors differ: {:?} vs {:?}",
                self.error, other.error
            )
        })
    }
}

#[cfg(test)]
#[path = "agreement_tests.rs"]
mod tests;
