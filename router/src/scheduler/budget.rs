//! Token and KV-block arithmetic shared by admission and the batcher.
//!
//! Two caps bound what is resident in the KV cache: the number of blocks the shard allocated
//! (`num_blocks` of `block_size` tokens) and `max_batch_total_tokens`. Both are counted in
//! tokens whose K/V are in the cache ("computed" tokens), never reserved ahead for
//! `max_new_tokens`.

use super::batcher::WaitingView;
use super::interface::{GenerationError, SchedulerConfig};

/// KV blocks needed to hold `num_tokens` tokens.
pub fn blocks_for_tokens(num_tokens: usize, block_size: usize) -> usize {
    num_tokens.div_ceil(block_size)
}

/// The per-step caps the batcher works within, taken from the scheduler's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub block_size: usize,
    pub max_batch_prefill_tokens: usize,
    pub max_batch_total_tokens: usize,
    pub max_batch_size: usize,
    /// Most lookahead slots reserved per decode (speculative decoding).
    pub num_speculative_tokens: usize,
    /// Most distinct LoRA adapters in one step (the base model does not count).
    pub max_loras_per_batch: usize,
}

impl BatchLimits {
    pub fn from_config(config: &SchedulerConfig) -> Self {
        Self {
            block_size: config.block_size,
            max_batch_prefill_tokens: config.max_batch_prefill_tokens,
            max_batch_total_tokens: config.max_batch_total_tokens,
            max_batch_size: config.max_batch_size,
            num_speculative_tokens: config.num_speculative_tokens,
            max_loras_per_batch: config.max_loras_per_batch,
        }
    }
}

/// Refuses a request that could never run, even alone: its prompt plus `max_new_tokens` need
/// more blocks than the cache has, or more tokens than `max_batch_total_tokens`. Waiting for it
/// would deadlock, so it fails at once.
pub fn check_fits_cache(
    num_prompt_tokens: usize,
    max_new_tokens: usize,
    config: &SchedulerConfig,
) -> Result<(), GenerationError> {
    let num_tokens = num_prompt_tokens + max_new_tokens;
    let needed_blocks = blocks_for_tokens(num_tokens, config.block_size);
    if needed_blocks > config.num_blocks {
        return Err(GenerationError::TooLargeForCache {
            needed_blocks,
            total_blocks: config.num_blocks,
        });
    }
    if num_tokens > config.max_batch_total_tokens {
        // Report in blocks like the error's other cause: the blocks the token cap allows.
        return Err(GenerationError::TooLargeForCache {
            needed_blocks,
            total_blocks: config.max_batch_total_tokens / config.block_size,
        });
    }
    Ok(())
}

/// The first chunk of an admitted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmittedChunk {
    pub num_tokens: usize,
    pub num_new_blocks: usize,
}

/// What is left of one step's resources while the batcher fills it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepBudget {
    pub block_size: usize,
    pub num_free_blocks: usize,
    /// Computed tokens over all running requests, including those planned this step.
    pub num_resident_tokens: usize,
    pub max_resident_tokens: usize,
    pub num_prefill_tokens_left: usize,
}

impl StepBudget {
    /// New blocks a sequence holding `num_blocks_held` blocks needs to cover `num_tokens`.
    pub fn new_blocks_needed(&self, num_tokens: usize, num_blocks_held: usize) -> usize {
        blocks_for_tokens(num_tokens, self.block_size).saturating_sub(num_blocks_held)
    }

    /// Whether `num_step_tokens` more computed tokens needing `num_new_blocks` blocks fit.
    pub fn fits(&self, num_step_tokens: usize, num_new_blocks: usize) -> bool {
        num_new_blocks <= self.num_free_blocks
            && self.num_resident_tokens + num_step_tokens <= self.max_resident_tokens
    }

    /// Most prompt tokens (at most `num_wanted_tokens`) a sequence with `num_computed_tokens`
    /// computed and `num_blocks_held` blocks can compute now, given free blocks, the resident
    /// token cap and the step's prefill budget.
    pub fn chunk_fit(
        &self,
        num_wanted_tokens: usize,
        num_computed_tokens: usize,
        num_blocks_held: usize,
    ) -> usize {
        let block_room = ((num_blocks_held + self.num_free_blocks) * self.block_size)
            .saturating_sub(num_computed_tokens);
        let resident_room = self
            .max_resident_tokens
            .saturating_sub(self.num_resident_tokens);
        num_wanted_tokens
            .min(self.num_prefill_tokens_left)
            .min(block_room)
            .min(resident_room)
    }

    /// Takes `num_step_tokens` computed tokens and `num_new_blocks` blocks for a planned item.
    pub fn take(&mut self, num_step_tokens: usize, num_new_blocks: usize, is_prefill: bool) {
        self.num_free_blocks -= num_new_blocks;
        self.num_resident_tokens += num_step_tokens;
        if is_prefill {
            self.num_prefill_tokens_left -= num_step_tokens;
        }
    }

    /// Takes what a waiting request's first chunk needs: the free cached blocks of its prefix,
    /// new blocks for the chunk, and its cached plus chunk tokens as resident. None (nothing
    /// taken) when not a single token fits.
    pub fn admit(&mut self, view: &WaitingView) -> Option<AdmittedChunk> {
        let num_cached_blocks = view.num_cached_tokens / self.block_size;
        let num_free_blocks = self
            .num_free_blocks
            .checked_sub(view.num_free_cached_blocks)?;
        let num_resident_tokens = self.num_resident_tokens + view.num_cached_tokens;
        let trial = StepBudget {
            num_free_blocks,
            num_resident_tokens,
            ..*self
        };
        let num_tokens = trial.chunk_fit(
            view.num_input_tokens - view.num_cached_tokens,
            view.num_cached_tokens,
            num_cached_blocks,
        );
        if num_tokens == 0 || num_resident_tokens > self.max_resident_tokens {
            return None;
        }
        let num_new_blocks =
            trial.new_blocks_needed(view.num_cached_tokens + num_tokens, num_cached_blocks);
        *self = trial;
        self.take(num_tokens, num_new_blocks, true);
        Some(AdmittedChunk {
            num_tokens,
            num_new_blocks,
        })
    }

    /// Gives back a preempted sequence's blocks and computed tokens.
    pub fn give_back(&mut self, num_computed_tokens: usize, num_blocks_held: usize) {
        self.num_free_blocks += num_blocks_held;
        self.num_resident_tokens -= num_computed_tokens;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(num_blocks: usize, max_batch_total_tokens: usize) -> SchedulerConfig {
        SchedulerConfig {
            block_size: 4,
            num_blocks,
            max_batch_prefill_tokens: 16,
            max_batch_total_tokens,
            max_batch_size: 8,
            max_total_tokens: 64,
            max_waiting_requests: 8,
            prefix_caching: true,
            num_speculative_tokens: 0,
            max_loras_per_batch: 8,
            async_scheduling: true,
        }
    }

    fn budget() -> StepBudget {
        StepBudget {
            block_size: 4,
            num_free_blocks: 3,
            num_resident_tokens: 10,
            max_resident_tokens: 30,
            num_prefill_tokens_left: 16,
        }
    }

    #[test]
    fn blocks_round_up() {
        assert_eq!(blocks_for_tokens(0, 4), 0);
        assert_eq!(blocks_for_tokens(1, 4), 1);
        assert_eq!(blocks_for_tokens(4, 4), 1);
        assert_eq!(blocks_for_tokens(5, 4), 2);
        assert_eq!(blocks_for_tokens(16, 16), 1);
    }

    #[test]
    fn cache_fit_counts_prompt_plus_max_new_tokens() {
        let config = config(12, 48);
        assert!(check_fits_cache(40, 8, &config).is_ok());
        match check_fits_cache(40, 9, &config) {
            Err(GenerationError::TooLargeForCache {
                needed_blocks,
                total_blocks,
            }) => {
                assert_eq!((needed_blocks, total_blocks), (13, 12));
            }
            other => panic!("expected TooLargeForCache, got {other:?}"),
        }
    }

    #[test]
    fn cache_fit_respects_total_token_cap() {
        let config = config(100, 20);
        assert!(check_fits_cache(10, 10, &config).is_ok());
        match check_fits_cache(10, 11, &config) {
            Err(GenerationError::TooLargeForCache {
                needed_blocks,
                total_blocks,
            }) => {
                assert_eq!((needed_blocks, total_blocks), (6, 5));
            }
            other => panic!("expected TooLargeForCache, got {other:?}"),
        }
    }

    #[test]
    fn new_blocks_only_beyond_held() {
        let budget = budget();
        // 9 tokens need 3 blocks; 2 held.
        assert_eq!(budget.new_blocks_needed(9, 2), 1);
        assert_eq!(budget.new_blocks_needed(8, 2), 0);
        assert_eq!(budget.new_blocks_needed(3, 2), 0);
    }

    #[test]
    fn chunk_fit_takes_the_tightest_cap() {
        let mut budget = budget();
        // Blocks: (1 held + 3 free) * 4 = 16 token slots, 2 already computed -> 14.
        assert_eq!(budget.chunk_fit(100, 2, 1), 14);
        // Prefill budget.
        budget.num_prefill_tokens_left = 5;
        assert_eq!(budget.chunk_fit(100, 2, 1), 5);
        // Wanted tokens.
        assert_eq!(budget.chunk_fit(3, 2, 1), 3);
        // Resident cap: 30 - 28 = 2.
        budget.num_resident_tokens = 28;
        assert_eq!(budget.chunk_fit(100, 2, 1), 2);
        // No blocks at all and nothing held.
        let empty = StepBudget {
            num_free_blocks: 0,
            ..self::budget()
        };
        assert_eq!(empty.chunk_fit(100, 0, 0), 0);
    }

    #[test]
    fn take_and_give_back_balance() {
        let mut budget = budget();
        assert!(budget.fits(1, 1));
        budget.take(4, 1, true);
        assert_eq!(budget.num_free_blocks, 2);
        assert_eq!(budget.num_resident_tokens, 14);
        assert_eq!(budget.num_prefill_tokens_left, 12);
        budget.take(1, 0, false);
        assert_eq!(budget.num_prefill_tokens_left, 12);
        assert!(!budget.fits(1, 3));
        assert!(!budget.fits(16, 0));
        budget.give_back(5, 1);
        assert_eq!(budget.num_free_blocks, 3);
        assert_eq!(budget.num_resident_tokens, 10);
    }
}
