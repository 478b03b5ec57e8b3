//! Batcher decisions from small hand-built states.

use super::*;

fn limits(max_batch_prefill_tokens: usize) -> BatchLimits {
    BatchLimits {
        block_size: 4,
        max_batch_prefill_tokens,
        max_batch_total_tokens: 10_000,
        max_batch_size: 8,
        num_speculative_tokens: 0,
        max_loras_per_batch: 8,
    }
}

/// A decoding request with `num_tokens` tokens, all but the last computed, holding exactly
/// the blocks its computed tokens need.
fn decoding(request_id: u64, num_tokens: usize) -> RunningView {
    let num_computed_tokens = num_tokens - 1;
    RunningView {
        request_id,
        num_tokens,
        num_computed_tokens,
        num_blocks_held: num_computed_tokens.div_ceil(4),
        num_blocks_released: num_computed_tokens.div_ceil(4),
        is_decoding: true,
        adapter: None,
    }
}

fn prefilling(request_id: u64, num_tokens: usize, num_computed_tokens: usize) -> RunningView {
    RunningView {
        request_id,
        num_tokens,
        num_computed_tokens,
        num_blocks_held: num_computed_tokens.div_ceil(4),
        num_blocks_released: num_computed_tokens.div_ceil(4),
        is_decoding: false,
        adapter: None,
    }
}

fn waiting(request_id: u64, num_input_tokens: usize) -> WaitingView {
    WaitingView {
        request_id,
        num_input_tokens,
        num_cached_tokens: 0,
        num_free_cached_blocks: 0,
        is_waiting_for_prefix: false,
        adapter: None,
    }
}

/// A waiting request whose first `num_cached_tokens` are in the prefix cache, of which
/// `num_free_cached_blocks` blocks are free (nobody holds them).
fn waiting_with_prefix(
    request_id: u64,
    num_input_tokens: usize,
    num_cached_tokens: usize,
    num_free_cached_blocks: usize,
) -> WaitingView {
    WaitingView {
        num_cached_tokens,
        num_free_cached_blocks,
        ..waiting(request_id, num_input_tokens)
    }
}

#[test]
fn a_cached_prefix_is_skipped_and_its_free_blocks_are_taken() {
    let limits = limits(16);
    // 20 tokens, 12 cached (3 blocks, 2 of them free): 8 tokens computed, needing 2 new blocks.
    let plan = plan_step(&limits, &[], &[waiting_with_prefix(1, 20, 12, 2)], 4);
    assert_eq!(
        plan.chunks,
        vec![ChunkPlan {
            request_id: 1,
            num_cached_tokens: 12,
            num_tokens: 8,
            is_last_chunk: true,
            num_new_blocks: 2,
        }]
    );
    // With 3 free blocks, taking the 2 free cached ones leaves room for only 4 new tokens.
    let tight = plan_step(&limits, &[], &[waiting_with_prefix(1, 20, 12, 2)], 3);
    assert_eq!(tight.chunks[0].num_tokens, 4);
    assert!(!tight.chunks[0].is_last_chunk);
    // Fewer free blocks than its free cached blocks: it waits.
    assert_eq!(
        plan_step(&limits, &[], &[waiting_with_prefix(1, 20, 12, 2)], 1).num_admitted,
        0
    );
}

#[test]
fn a_request_waiting_for_a_prefix_being_computed_holds_the_queue() {
    let limits = limits(64);
    let deferred = WaitingView {
        is_waiting_for_prefix: true,
        ..waiting(2, 8)
    };
    let plan = plan_step(&limits, &[], &[waiting(1, 8), deferred, waiting(3, 8)], 100);
    assert_eq!(plan.num_admitted, 1);
    assert_eq!(plan.chunks.len(), 1);
}

#[test]
fn preempting_a_request_gives_back_only_the_blocks_it_alone_held() {
    let limits = limits(16);
    // Request 2 shares two of its three blocks with request 1: preempting it frees 1 block,
    // not 3; that is exactly the block request 1's decode needs (none is free).
    let oldest = RunningView {
        num_blocks_held: 2,
        num_blocks_released: 2,
        ..decoding(1, 9)
    };
    let sharing = RunningView {
        num_blocks_held: 3,
        num_blocks_released: 1,
        ..decoding(2, 12)
    };
    let plan = plan_step(&limits, &[oldest, sharing], &[], 0);
    assert_eq!(plan.preempted_ids, vec![2]);
    assert_eq!(plan.decodes.len(), 1, "one block freed, one needed");
    // Had it freed nothing, request 1 would have had to preempt itself.
    let pinned = RunningView {
        num_blocks_released: 0,
        ..sharing
    };
    let plan = plan_step(&limits, &[oldest, pinned], &[], 0);
    assert_eq!(plan.preempted_ids, vec![2, 1]);
    assert!(plan.decodes.is_empty());
}

#[test]
fn long_prompt_is_chunked_over_steps() {
    let limits = limits(16);
    let first = plan_step(&limits, &[], &[waiting(1, 40)], 100);
    assert_eq!(first.num_admitted, 1);
    assert_eq!(
        first.chunks,
        vec![ChunkPlan {
            request_id: 1,
            num_cached_tokens: 0,
            num_tokens: 16,
            is_last_chunk: false,
            num_new_blocks: 4
        }]
    );
    let second = plan_step(&limits, &[prefilling(1, 40, 16)], &[], 96);
    assert_eq!(second.chunks[0].num_cached_tokens, 16);
    assert_eq!(second.chunks[0].num_tokens, 16);
    assert!(!second.chunks[0].is_last_chunk);
    let third = plan_step(&limits, &[prefilling(1, 40, 32)], &[], 92);
    assert_eq!(third.chunks[0].num_tokens, 8);
    assert!(third.chunks[0].is_last_chunk);
    assert_eq!(third.chunks[0].num_new_blocks, 2);
    assert!(third.decodes.is_empty());
}

#[test]
fn prefill_budget_is_shared_and_respected() {
    let limits = limits(20);
    let waiting = [waiting(1, 12), waiting(2, 12), waiting(3, 12)];
    let plan = plan_step(&limits, &[], &waiting, 100);
    assert_eq!(plan.num_prefill_tokens(), 20);
    assert_eq!(plan.num_admitted, 2);
    assert_eq!(plan.chunks[0].num_tokens, 12);
    assert!(plan.chunks[0].is_last_chunk);
    assert_eq!(plan.chunks[1].num_tokens, 8);
    assert!(!plan.chunks[1].is_last_chunk);
}

#[test]
fn decodes_are_always_included_even_with_the_budget_spent() {
    let limits = limits(8);
    let running = [decoding(1, 5), prefilling(2, 30, 8), decoding(3, 9)];
    let plan = plan_step(&limits, &running, &[waiting(4, 8)], 100);
    let decode_ids: Vec<u64> = plan
        .decodes
        .iter()
        .map(|decode| decode.request_id)
        .collect();
    assert_eq!(decode_ids, vec![1, 3]);
    // The running prefill takes the whole prompt budget; nothing is admitted.
    assert_eq!(plan.chunks.len(), 1);
    assert_eq!(plan.chunks[0].request_id, 2);
    assert_eq!(plan.chunks[0].num_tokens, 8);
    assert_eq!(plan.num_admitted, 0);
    assert!(plan.preempted_ids.is_empty());
}

#[test]
fn decode_gets_a_block_only_when_crossing_a_boundary() {
    let limits = limits(8);
    // 9 tokens, 8 computed in 2 blocks: the 9th needs a third block.
    let crossing = decoding(1, 9);
    // 7 tokens, 6 computed in 2 blocks: room left in the second block.
    let inside = decoding(2, 7);
    let plan = plan_step(&limits, &[crossing, inside], &[], 1);
    assert_eq!(
        plan.decodes,
        vec![
            DecodePlan {
                request_id: 1,
                num_new_blocks: 1
            },
            DecodePlan {
                request_id: 2,
                num_new_blocks: 0
            }
        ]
    );
}

#[test]
fn out_of_blocks_preempts_the_newest() {
    let limits = limits(8);
    // All three cross a block boundary; only one block is free.
    let running = [decoding(1, 9), decoding(2, 5), decoding(3, 13)];
    let plan = plan_step(&limits, &running, &[waiting(9, 4)], 1);
    // 1 takes the free block; 2 needs one: 3 (newest, 3 blocks) is preempted, 2 proceeds.
    assert_eq!(plan.preempted_ids, vec![3]);
    let decode_ids: Vec<u64> = plan
        .decodes
        .iter()
        .map(|decode| decode.request_id)
        .collect();
    assert_eq!(decode_ids, vec![1, 2]);
    // No admission in a step that preempted.
    assert_eq!(plan.num_admitted, 0);
    assert!(plan.chunks.is_empty());
}

#[test]
fn the_newest_preempts_itself_when_nothing_newer_is_left() {
    let limits = limits(8);
    let running = [decoding(1, 6), decoding(2, 9)];
    let plan = plan_step(&limits, &running, &[], 0);
    assert_eq!(plan.preempted_ids, vec![2]);
    assert_eq!(
        plan.decodes,
        vec![DecodePlan {
            request_id: 1,
            num_new_blocks: 0
        }]
    );
}

#[test]
fn preemption_frees_enough_for_older_requests_in_order() {
    let limits = limits(8);
    let running = [
        decoding(1, 9),
        decoding(2, 9),
        decoding(3, 2),
        decoding(4, 2),
    ];
    // Requests 3 and 4 hold one block each; 1 and 2 each need one new block; none is free.
    let plan = plan_step(&limits, &running, &[], 0);
    assert_eq!(plan.preempted_ids, vec![4, 3]);
    let decode_ids: Vec<u64> = plan
        .decodes
        .iter()
        .map(|decode| decode.request_id)
        .collect();
    assert_eq!(decode_ids, vec![1, 2]);
}

#[test]
fn prefilling_request_shrinks_its_chunk_before_preempting() {
    let limits = limits(16);
    let running = [prefilling(1, 40, 8), decoding(2, 3)];
    // One free block: the prefill takes 4 tokens instead of 16; the decode needs no block.
    let plan = plan_step(&limits, &running, &[], 1);
    assert!(plan.preempted_ids.is_empty());
    assert_eq!(plan.chunks[0].num_tokens, 4);
    assert_eq!(plan.chunks[0].num_new_blocks, 1);
    assert_eq!(plan.decodes.len(), 1);
}

#[test]
fn stuck_oldest_prefill_preempts_newer_requests() {
    let limits = limits(16);
    // Both partially prefilled and no block free: without preemption neither could progress.
    let running = [prefilling(1, 24, 8), prefilling(2, 24, 8)];
    let plan = plan_step(&limits, &running, &[], 0);
    assert_eq!(plan.preempted_ids, vec![2]);
    assert_eq!(plan.chunks.len(), 1);
    assert_eq!(plan.chunks[0].request_id, 1);
    assert_eq!(plan.chunks[0].num_tokens, 8);
}

#[test]
fn newest_prefill_waits_instead_of_preempting_itself() {
    let limits = limits(16);
    let running = [decoding(1, 3), prefilling(2, 24, 8)];
    let plan = plan_step(&limits, &running, &[], 0);
    assert!(plan.preempted_ids.is_empty());
    assert_eq!(plan.decodes.len(), 1);
    assert!(plan.chunks.is_empty());
}

#[test]
fn admission_is_fifo_and_uses_only_free_blocks() {
    let limits = limits(64);
    // Two free blocks: the front request gets a partial chunk of 8 tokens, nobody overtakes.
    let plan = plan_step(&limits, &[], &[waiting(1, 20), waiting(2, 4)], 2);
    assert_eq!(plan.num_admitted, 1);
    assert_eq!(plan.chunks[0].request_id, 1);
    assert_eq!(plan.chunks[0].num_tokens, 8);
    let none_free = plan_step(&limits, &[decoding(5, 3)], &[waiting(1, 4)], 0);
    assert_eq!(none_free.num_admitted, 0);
    assert!(none_free.chunks.is_empty());
}

#[test]
fn batch_size_caps_running_plus_admitted() {
    let limits = BatchLimits {
        max_batch_size: 3,
        ..limits(100)
    };
    let running = [decoding(1, 3), decoding(2, 3)];
    let waiting = [waiting(3, 4), waiting(4, 4)];
    let plan = plan_step(&limits, &running, &waiting, 100);
    assert_eq!(plan.num_admitted, 1);
    assert_eq!(plan.decodes.len() + plan.chunks.len(), 3);
}

#[test]
fn total_token_cap_preempts_like_blocks() {
    let limits = BatchLimits {
        max_batch_total_tokens: 10,
        ..limits(16)
    };
    // Resident: 5 + 4 = 9 tokens; both decodes add one token -> 11 > 10.
    let running = [decoding(1, 6), decoding(2, 5)];
    let plan = plan_step(&limits, &running, &[waiting(3, 1)], 100);
    assert_eq!(plan.preempted_ids, vec![2]);
    assert_eq!(plan.decodes.len(), 1);
    // An admission is capped by the resident tokens too.
    let fresh = plan_step(&limits, &[], &[waiting(3, 30)], 100);
    assert_eq!(fresh.chunks[0].num_tokens, 10);
}

#[test]
fn empty_state_plans_nothing() {
    let plan = plan_step(&limits(16), &[], &[], 10);
    assert!(plan.is_empty());
    assert_eq!(
        plan,
        StepPlan {
            num_resident_tokens_left: 10_000, // all of max_batch_total_tokens
            ..StepPlan::default()
        }
    );
}

#[test]
fn the_plan_says_how_many_resident_tokens_are_left_for_lookahead() {
    let running = [decoding(1, 3), decoding(2, 5)];
    let plan = plan_step(&limits(16), &running, &[waiting(3, 4)], 100);
    // The decodes leave 3 + 5 tokens computed, then the 4-token prompt: 12 resident.
    assert_eq!(plan.num_resident_tokens_left, 10_000 - 12);
}

#[test]
fn a_step_holds_at_most_max_loras_per_batch_adapters_and_the_rest_wait() {
    let limits = BatchLimits {
        max_loras_per_batch: 2,
        ..limits(100)
    };
    let under = |adapter: u128, view: WaitingView| WaitingView {
        adapter: Some(adapter),
        ..view
    };
    let running = [
        RunningView {
            adapter: Some(10),
            ..decoding(1, 3)
        },
        decoding(2, 3), // the base model does not count
    ];
    // Adapter 10 is running; 20 makes two; 30 would be a third: it waits, and FIFO holds
    // the base-model request behind it too.
    let queue = [
        under(20, waiting(3, 4)),
        under(10, waiting(4, 4)),
        under(30, waiting(5, 4)),
        waiting(6, 4),
    ];
    let plan = plan_step(&limits, &running, &queue, 100);
    assert_eq!(plan.num_admitted, 2);
    let admitted: Vec<u64> = plan.chunks.iter().map(|chunk| chunk.request_id).collect();
    assert_eq!(admitted, vec![3, 4]);
    assert_eq!(
        plan.decodes.len(),
        2,
        "running requests are never held back"
    );
    // Once adapter 10's request left, the third adapter gets in.
    let plan = plan_step(&limits, &running[1..], &queue[2..], 100);
    assert_eq!(plan.num_admitted, 2);
    // With no request of another adapter running, any adapter gets in.
    let base_only = plan_step(&limits, &[], &[under(30, waiting(5, 4))], 100);
    assert_eq!(base_only.num_admitted, 1);
}
