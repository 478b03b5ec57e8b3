use super::*;
use crate::testing::lcg::Lcg;

const BLOCK_SIZE: usize = 4;

fn hashes_of(token_ids: &[u32]) -> Vec<BlockHash> {
    hashes_under(token_ids, "")
}

/// The chain hashes of a request running with LoRA adapter `adapter_id` ("": the base model).
fn hashes_under(token_ids: &[u32], adapter_id: &str) -> Vec<BlockHash> {
    let mut hashes = Vec::new();
    let root = adapter_root_hash(adapter_id);
    extend_block_hashes(&mut hashes, token_ids, BLOCK_SIZE, root);
    hashes
}

/// Runs a request through the manager as the scheduler does: prefix, slots for all of
/// `token_ids`, computed; returns its cached token count.
fn compute(kv: &mut KvCacheManager, request_id: u64, token_ids: &[u32]) -> usize {
    compute_under(kv, request_id, token_ids, "")
}

fn compute_under(
    kv: &mut KvCacheManager,
    request_id: u64,
    token_ids: &[u32],
    adapter_id: &str,
) -> usize {
    let hashes = hashes_under(token_ids, adapter_id);
    let hit = kv.cached_prefix(token_ids, &hashes);
    let num_cached = kv
        .acquire_prefix(request_id, hit, token_ids.len())
        .expect("new request");
    kv.allocate_slots(request_id, token_ids.len(), 0)
        .expect("blocks free");
    kv.commit_computed(request_id, token_ids, &hashes, token_ids.len());
    num_cached
}

fn tokens(range: std::ops::Range<u32>) -> Vec<u32> {
    range.collect()
}

#[test]
fn a_shared_prefix_gets_the_same_blocks_and_counts_references() {
    let mut kv = KvCacheManager::new(16, BLOCK_SIZE, true);
    let first = tokens(0..10); // two full blocks and a partial one
    assert_eq!(compute(&mut kv, 1, &first), 0);
    let mut second = tokens(0..8);
    second.extend([90, 91, 92]);
    assert_eq!(compute(&mut kv, 2, &second), 8);
    assert_eq!(kv.block_table(1)[..2], kv.block_table(2)[..2]);
    assert_ne!(kv.block_table(1)[2], kv.block_table(2)[2]);
    assert_eq!(kv.num_free_blocks(), 16 - 4);
    kv.free(1);
    // The shared blocks are still held by request 2; only request 1's own block is free.
    assert_eq!(kv.num_free_blocks(), 16 - 3);
    kv.check_consistency().expect("consistent");
    kv.free(2);
    assert_eq!(kv.num_free_blocks(), 16);
    kv.check_consistency().expect("consistent");
    let counters = kv.counters();
    assert_eq!(counters.prefix_query_tokens, 21);
    assert_eq!(counters.prefix_hit_tokens, 8);
}

#[test]
fn partial_blocks_are_never_shared_and_one_token_is_always_computed() {
    let mut kv = KvCacheManager::new(16, BLOCK_SIZE, true);
    compute(&mut kv, 1, &tokens(0..6)); // one full block, one partial
    assert_eq!(kv.num_cached_blocks(), 1);
    // Same 6 tokens: only the full block hits; the partial one is computed again.
    assert_eq!(compute(&mut kv, 2, &tokens(0..6)), 4);
    // Exactly two full blocks, both cached: the last block is recomputed for its logits.
    compute(&mut kv, 3, &tokens(0..8));
    assert_eq!(compute(&mut kv, 4, &tokens(0..8)), 4);
    assert_ne!(kv.block_table(3)[1], kv.block_table(4)[1]);
}

#[test]
fn a_different_earlier_token_changes_every_later_hash() {
    let mut kv = KvCacheManager::new(16, BLOCK_SIZE, true);
    compute(&mut kv, 1, &tokens(0..9));
    let mut other = tokens(0..9);
    other[0] = 77; // the second block's own tokens are equal, its prefix is not
    assert_eq!(compute(&mut kv, 2, &other), 0);
}

#[test]
fn freed_cached_blocks_are_reused_until_evicted_least_recently_freed_first() {
    let mut kv = KvCacheManager::new(4, BLOCK_SIZE, true);
    compute(&mut kv, 1, &tokens(0..5)); // blocks: [0..4] cached, partial
    compute(&mut kv, 2, &tokens(100..105));
    kv.free(1);
    kv.free(2);
    assert_eq!(kv.num_free_blocks(), 4);
    assert_eq!(kv.num_cached_blocks(), 2);
    // Two uncached blocks are taken first, then the oldest freed cached block (request 1's).
    kv.allocate_slots(3, 12, 0).expect("fits");
    assert_eq!(kv.counters().evicted_blocks, 1);
    assert_eq!(
        kv.cached_prefix(&tokens(0..5), &hashes_of(&tokens(0..5)))
            .num_tokens,
        0
    );
    let survivor = tokens(100..105);
    assert_eq!(
        kv.cached_prefix(&survivor, &hashes_of(&survivor))
            .num_tokens,
        4
    );
    kv.check_consistency().expect("consistent");
}

#[test]
fn reusing_a_free_cached_block_takes_it_off_the_free_list() {
    let mut kv = KvCacheManager::new(3, BLOCK_SIZE, true);
    compute(&mut kv, 1, &tokens(0..5));
    kv.free(1);
    let hit = kv.cached_prefix(&tokens(0..6), &hashes_of(&tokens(0..6)));
    assert_eq!(kv.num_free_among(&hit.block_ids), 1);
    assert_eq!(compute(&mut kv, 2, &tokens(0..6)), 4);
    assert_eq!(kv.num_free_blocks(), 1);
    // Allocating the last free block must not evict the one request 2 holds.
    kv.allocate_slots(3, 4, 0).expect("one block left");
    assert_eq!(kv.counters().evicted_blocks, 0);
    assert!(kv.allocate_slots(4, 1, 0).is_err());
    kv.check_consistency().expect("consistent");
}

#[test]
fn preempting_a_request_that_shares_blocks_keeps_them_for_the_other() {
    let mut kv = KvCacheManager::new(8, BLOCK_SIZE, true);
    compute(&mut kv, 1, &tokens(0..9));
    let mut longer = tokens(0..9);
    longer.extend(50..54);
    compute(&mut kv, 2, &longer);
    // Newest first: preempting 2 frees its own blocks only; then 1 frees the shared ones too.
    assert_eq!(kv.blocks_released_newest_first(&[1, 2]), vec![3, 2]);
    let shared = kv.block_table(1)[..2].to_vec();
    kv.free(2);
    assert_eq!(kv.block_table(1)[..2], shared[..]);
    assert_eq!(kv.num_free_blocks(), 8 - 3);
    kv.check_consistency().expect("consistent");
}

#[test]
fn with_prefix_caching_off_nothing_is_indexed_or_shared() {
    let mut kv = KvCacheManager::new(8, BLOCK_SIZE, false);
    compute(&mut kv, 1, &tokens(0..9));
    assert_eq!(compute(&mut kv, 2, &tokens(0..9)), 0);
    assert_eq!(kv.num_cached_blocks(), 0);
    assert_eq!(kv.counters(), KvCacheCounters::default());
}

#[test]
fn allocation_is_all_or_nothing_and_a_second_table_is_refused() {
    let mut kv = KvCacheManager::new(2, BLOCK_SIZE, true);
    assert_eq!(
        kv.allocate_slots(1, 9, 0),
        Err(KvCacheError::NotEnoughBlocks { needed: 3, free: 2 })
    );
    assert_eq!(kv.num_free_blocks(), 2);
    assert_eq!(kv.allocate_slots(1, 4, 3).map(|ids| ids.len()), Ok(2));
    assert_eq!(
        kv.acquire_prefix(1, PrefixHit::default(), 1),
        Err(KvCacheError::AlreadyAllocated(1))
    );
}

#[test]
fn a_thousand_random_operations_leak_nothing() {
    let mut kv = KvCacheManager::new(24, BLOCK_SIZE, true);
    let mut random = Lcg(7);
    // request id -> (tokens, computed)
    let mut live: HashMap<u64, (Vec<u32>, usize)> = HashMap::new();
    for step in 0..1000u64 {
        match random.below(4) {
            0 | 1 => {
                // A new request from one of a few prompt families (so prefixes repeat).
                let family = random.below(3) as u32;
                let length = 1 + random.below(14) as usize;
                let token_ids: Vec<u32> = (0..length as u32).map(|i| family * 1000 + i).collect();
                let hashes = hashes_of(&token_ids);
                let hit = kv.cached_prefix(&token_ids, &hashes);
                let cached = kv.acquire_prefix(step, hit, length).expect("new id");
                assert_eq!(cached % BLOCK_SIZE, 0);
                assert!(cached < token_ids.len());
                live.insert(step, (token_ids, cached));
            }
            2 => {
                // Some live request computes up to two more tokens (growing its sequence).
                let Some(&request_id) = live.keys().min_by_key(|id| (*id * 31 + step) % 17) else {
                    continue;
                };
                let (token_ids, computed) = live.get_mut(&request_id).expect("live");
                let target = (*computed + 2).min(token_ids.len() + 1);
                if target > token_ids.len() {
                    token_ids.push(request_id as u32);
                }
                if kv.allocate_slots(request_id, target, 0).is_ok() {
                    *computed = target;
                    let hashes = hashes_of(token_ids);
                    kv.commit_computed(request_id, token_ids, &hashes, *computed);
                }
            }
            _ => {
                let Some(&request_id) = live.keys().max_by_key(|id| (*id * 7 + step) % 13) else {
                    continue;
                };
                live.remove(&request_id);
                kv.free(request_id);
            }
        }
        kv.check_consistency()
            .unwrap_or_else(|problem| panic!("step {step}: {problem}"));
    }
    for request_id in live.into_keys() {
        kv.free(request_id);
    }
    kv.check_consistency().expect("consistent");
    assert_eq!(kv.num_free_blocks(), kv.num_total_blocks());
    assert!(
        kv.counters().prefix_hit_tokens > 0,
        "the workload repeats prefixes"
    );
}

#[test]
fn adapters_never_share_blocks_of_the_same_tokens() {
    let mut kv = KvCacheManager::new(32, BLOCK_SIZE, true);
    let prompt = tokens(0..13); // three full blocks and a partial one
    assert_eq!(compute_under(&mut kv, 1, &prompt, ""), 0);
    assert_eq!(compute_under(&mut kv, 2, &prompt, "math"), 0);
    assert_eq!(compute_under(&mut kv, 3, &prompt, "code"), 0);
    // Each adapter reuses its own blocks, and only its own.
    assert_eq!(compute_under(&mut kv, 4, &prompt, "math"), 12);
    assert_eq!(compute_under(&mut kv, 5, &prompt, ""), 12);
    let table = |request_id: u64| kv.block_table(request_id)[..3].to_vec();
    assert_eq!(table(4), table(2));
    assert_eq!(table(5), table(1));
    for (one, other) in [(1, 2), (1, 3), (2, 3)] {
        let (one, other) = (table(one), table(other));
        assert!(
            one.iter().all(|block| !other.contains(block)),
            "{one:?} vs {other:?}"
        );
    }
    // The base model's chain is the one it always was; adapters' chains all differ from it.
    assert_eq!(hashes_under(&prompt, ""), hashes_of(&prompt));
    assert_ne!(
        hashes_under(&prompt, "math")[0],
        hashes_under(&prompt, "code")[0]
    );
    kv.check_consistency().expect("consistent");
}
