//! Prefix caching through the whole scheduler against the fake shard, which checks that every
//! cached token really is in the blocks a request is given.

use super::*;

/// `num_shared` tokens every prompt starts with, then `tail`.
fn with_shared_prefix(num_shared: usize, tail: &[u32]) -> Vec<u32> {
    (100..100 + num_shared as u32)
        .chain(tail.iter().copied())
        .collect()
}

async fn run_one(handle: &SchedulerHandle, prompt: &[u32], max_new_tokens: u32) -> Received {
    let receiver = handle
        .submit(request(prompt.to_vec(), max_new_tokens, false))
        .expect("admitted");
    let received = collect(receiver).await;
    assert_correct(&received, prompt, max_new_tokens);
    received
}

fn total_prefill_tokens(fake: &FakeShard) -> usize {
    fake.steps()
        .iter()
        .map(|step| step.num_prefill_tokens)
        .sum()
}

#[tokio::test]
async fn a_later_request_with_the_same_prefix_computes_only_its_own_tokens() {
    let fake = fake(4, 64);
    let handle = spawn_scheduler(fake.clone(), config(&fake, 64, 8));
    run_one(&handle, &with_shared_prefix(40, &[7, 8, 9]), 3).await;
    let before = total_prefill_tokens(&fake);
    run_one(&handle, &with_shared_prefix(40, &[5, 6, 4]), 3).await;
    assert_eq!(
        total_prefill_tokens(&fake) - before,
        3,
        "40 shared tokens cached"
    );
    let stats = wait_for_drain(&handle).await;
    assert_eq!(stats.prefix_cache_hit_tokens_total, 40);
    assert_eq!(stats.prefix_cache_query_tokens_total, 86);
    assert!(stats.kv_blocks_cached >= 10);
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn with_prefix_caching_off_every_prompt_is_computed() {
    let fake = fake(4, 64);
    let config = SchedulerConfig {
        prefix_caching: false,
        ..config(&fake, 64, 8)
    };
    let handle = spawn_scheduler(fake.clone(), config);
    run_one(&handle, &with_shared_prefix(40, &[7, 8, 9]), 3).await;
    run_one(&handle, &with_shared_prefix(40, &[5, 6, 4]), 3).await;
    assert_eq!(total_prefill_tokens(&fake), 86);
    let stats = wait_for_drain(&handle).await;
    assert_eq!(
        (stats.prefix_cache_hit_tokens_total, stats.kv_blocks_cached),
        (0, 0)
    );
}

#[tokio::test]
async fn a_follow_up_turn_reuses_the_blocks_of_the_previous_answer() {
    let fake = fake(4, 64);
    let handle = spawn_scheduler(fake.clone(), config(&fake, 64, 8));
    let first_prompt = with_shared_prefix(10, &[]);
    let first = run_one(&handle, &first_prompt, 9).await;
    // The next turn: the previous prompt, its answer, then the user's new message.
    let mut second_prompt = first_prompt.clone();
    second_prompt.extend(&first.token_ids);
    second_prompt.extend([3, 1, 4]);
    run_one(&handle, &second_prompt, 2).await;
    let stats = wait_for_drain(&handle).await;
    // 10 prompt + 9 generated tokens, of which the last was never computed: 18 computed,
    // 4 whole blocks = 16 tokens reused.
    assert_eq!(stats.prefix_cache_hit_tokens_total, 16);
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn candidates_of_one_prompt_compute_it_once() {
    let fake = fake(4, 64);
    let handle = spawn_scheduler(fake.clone(), config(&fake, 64, 8));
    let prompt = with_shared_prefix(30, &[]);
    let receivers: Vec<EventReceiver> = (0..4)
        .map(|_| {
            handle
                .submit(request(prompt.clone(), 4, false))
                .expect("admitted")
        })
        .collect();
    for received in join_all(receivers.into_iter().map(collect)).await {
        assert_correct(&received, &prompt, 4);
    }
    let stats = wait_for_drain(&handle).await;
    // The first computes all 30; the others reuse its 7 whole blocks and compute 2 each.
    assert_eq!(total_prefill_tokens(&fake), 30 + 3 * 2);
    assert_eq!(stats.prefix_cache_hit_tokens_total, 3 * 28);
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_memory_pressure_requests_sharing_a_prefix_all_complete() {
    // 12 blocks of 4 tokens: a request needs up to 7 blocks, so only one or two fit at once.
    let fake = fake(4, 12);
    let handle = spawn_scheduler(fake.clone(), config(&fake, 16, 32));
    let prompts: Vec<Vec<u32>> = (0..32u32)
        .map(|index| with_shared_prefix(16, &[index, index + 1, index + 2, index + 3]))
        .collect();
    let receivers: Vec<EventReceiver> = prompts
        .iter()
        .map(|prompt| {
            handle
                .submit(request(prompt.clone(), 6, false))
                .expect("admitted")
        })
        .collect();
    let results = join_all(receivers.into_iter().map(collect)).await;
    for (prompt, received) in prompts.iter().zip(&results) {
        assert_correct(received, prompt, 6);
    }
    let stats = wait_for_drain(&handle).await;
    assert_eq!(stats.kv_blocks_free, stats.kv_blocks_total);
    assert!(stats.prefix_cache_hit_tokens_total >= 16 * 16, "{stats:?}");
    assert_eq!(fake.violations(), Vec::<String>::new());
    for step in fake.steps() {
        assert!(step.num_blocks_in_use <= 12, "{step:?}");
    }
}
