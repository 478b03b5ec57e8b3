//! What the batcher sees of the scheduler's state: counts per request, with the KV cache
//! manager's knowledge folded in (which blocks are shared, which prefixes are cached, which
//! blocks are being computed right now).

use std::collections::HashSet;

use super::batcher::{RunningView, WaitingView};
use super::kv_cache_manager::{BlockHash, KvCacheManager, PrefixHit};
use super::sequence::Sequence;

/// Views of the running requests, oldest first, except those whose last token a step in
/// flight generates (no later step needs them).
pub fn running_views(running: &[Sequence], kv: &KvCacheManager) -> Vec<RunningView> {
    let needed: Vec<&Sequence> = running
        .iter()
        .filter(|sequence| !sequence.is_finishing())
        .collect();
    let ids: Vec<u64> = needed.iter().map(|sequence| sequence.request_id).collect();
    let released = kv.blocks_released_newest_first(&ids);
    needed
        .into_iter()
        .zip(released)
        .map(|(sequence, num_blocks_released)| RunningView {
            request_id: sequence.request_id,
            num_tokens: sequence.num_tokens(),
            num_computed_tokens: sequence.num_computed_tokens(),
            num_blocks_held: kv.num_blocks_held(sequence.request_id),
            num_blocks_released,
            is_decoding: sequence.is_decoding(),
            adapter: sequence.adapter_key(),
        })
        .collect()
}

/// The cached prefix a waiting request would start from (none when it wants prompt logprobs,
/// which need every prompt position computed).
pub fn prefix_hit(sequence: &Sequence, kv: &KvCacheManager) -> PrefixHit {
    if sequence.wants_prompt_logprobs() {
        return PrefixHit::default();
    }
    let input = &sequence.token_ids()[..sequence.num_input_tokens()];
    kv.cached_prefix(input, sequence.block_hashes())
}

/// Views of the waiting requests the batcher may admit, front first.
pub fn waiting_views<'a>(
    waiting: impl Iterator<Item = &'a Sequence>,
    running: &[Sequence],
    kv: &KvCacheManager,
) -> Vec<WaitingView> {
    let block_size = kv.block_size();
    // Blocks some request computes now (a step in flight, or the next one) or will if
    // admitted ahead: nobody behind it should compute the same block too. Until a step's
    // answer confirms them they are not in the prefix cache.
    let mut pending: HashSet<BlockHash> = HashSet::new();
    for sequence in running {
        let first = sequence.num_confirmed_tokens() / block_size;
        pending.extend(uncomputed_hashes(sequence, first, block_size));
    }
    let mut reused_free_blocks: HashSet<u32> = HashSet::new();
    waiting
        .map(|sequence| {
            let hit = prefix_hit(sequence, kv);
            let num_hit_blocks = hit.block_ids.len();
            let num_free_cached_blocks = hit
                .block_ids
                .iter()
                .filter(|&&block_id| kv.num_free_among(&[block_id]) == 1)
                .filter(|&&block_id| reused_free_blocks.insert(block_id))
                .count();
            let is_waiting_for_prefix = kv.is_prefix_caching()
                && !sequence.wants_prompt_logprobs()
                && sequence
                    .block_hashes()
                    .get(num_hit_blocks)
                    .filter(|_| num_hit_blocks < max_cacheable_blocks(sequence, block_size))
                    .is_some_and(|next| pending.contains(next));
            pending.extend(uncomputed_hashes(sequence, num_hit_blocks, block_size));
            WaitingView {
                request_id: sequence.request_id,
                num_input_tokens: sequence.num_input_tokens(),
                num_cached_tokens: hit.num_tokens,
                num_free_cached_blocks,
                is_waiting_for_prefix,
                adapter: sequence.adapter_key(),
            }
        })
        .collect()
}

/// Full blocks of the input a prefix hit may cover (one token always stays to compute).
fn max_cacheable_blocks(sequence: &Sequence, block_size: usize) -> usize {
    sequence.num_input_tokens().saturating_sub(1) / block_size
}

/// Hashes of the input's full blocks from block `first` on.
fn uncomputed_hashes(
    sequence: &Sequence,
    first: usize,
    block_size: usize,
) -> impl Iterator<Item = BlockHash> + '_ {
    let end = (sequence.num_input_tokens() / block_size).min(sequence.block_hashes().len());
    sequence.block_hashes()[first.min(end)..end].iter().copied()
}
