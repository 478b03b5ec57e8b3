//! Many small, pseudo-random configurations: requests wait under memory pressure but always
//! complete with exactly their tokens; cancellations mixed in never leak blocks.

use super::*;
use crate::testing::lcg::Lcg;

struct Case {
    prompt: Vec<u32>,
    max_new_tokens: u32,
    /// Drop the receiver after this many tokens.
    cancel_after_tokens: Option<usize>,
}

async fn run_case(receiver: EventReceiver, cancel_after_tokens: Option<usize>) -> Option<Received> {
    let Some(limit) = cancel_after_tokens else {
        return Some(collect(receiver).await);
    };
    let mut receiver = receiver;
    let mut num_tokens = 0;
    while num_tokens < limit {
        match receiver.recv().await {
            Some(GenerationEvent::Token {
                finish: Some(_), ..
            })
            | None => break,
            Some(GenerationEvent::Token { .. }) => num_tokens += 1,
            Some(_) => {}
        }
    }
    None // dropped here: cancelled (or already finished)
}

/// Runs one configuration, with `num_speculative_tokens` lookahead slots per decode and
/// synchronous or asynchronous scheduling; returns (preemptions, releases of cancelled
/// requests).
pub(super) async fn run_configuration(
    seed: u64,
    num_speculative_tokens: usize,
    async_scheduling: bool,
) -> (u64, usize) {
    let mut rng = Lcg(seed);
    let block_size = 1 + rng.below(4) as usize;
    let num_blocks = 6 + rng.below(10) as usize;
    let capacity_tokens = block_size * num_blocks;
    let fake = fake(block_size, num_blocks);
    let config = SchedulerConfig {
        max_batch_prefill_tokens: 1 + rng.below(12) as usize,
        // Sometimes the token cap binds before the blocks do.
        max_batch_total_tokens: capacity_tokens - rng.below(block_size as u64 + 1) as usize,
        max_batch_size: 1 + rng.below(8) as usize,
        num_speculative_tokens,
        async_scheduling,
        ..super::config(&fake, 1, 1)
    };
    let max_total_tokens = config.max_batch_total_tokens;
    let handle = spawn_scheduler(fake.clone(), config);
    let cases: Vec<Case> = (0..24)
        .map(|_| {
            let num_prompt_tokens = 1 + rng.below(max_total_tokens as u64 / 2) as usize;
            let room = (max_total_tokens - num_prompt_tokens) as u64;
            Case {
                prompt: prompt(num_prompt_tokens, rng.below(VOCAB_SIZE as u64) as u32),
                max_new_tokens: 1 + rng.below(room) as u32,
                cancel_after_tokens: (rng.below(4) == 0).then(|| rng.below(3) as usize),
            }
        })
        .collect();
    let runs = cases.iter().map(|case| {
        let submitted = request(case.prompt.clone(), case.max_new_tokens, false);
        run_case(
            handle.submit(submitted).expect("admitted"),
            case.cancel_after_tokens,
        )
    });
    let results = join_all(runs).await;
    for (case, received) in cases.iter().zip(&results) {
        if let Some(received) = received {
            assert_correct(received, &case.prompt, case.max_new_tokens);
        }
    }
    let stats = wait_for_drain(&handle).await;
    assert_eq!(fake.violations(), Vec::<String>::new(), "seed {seed}");
    for step in fake.steps() {
        assert!(
            step.num_blocks_in_use <= num_blocks,
            "seed {seed}: {step:?}"
        );
        assert!(
            step.num_resident_tokens <= max_total_tokens,
            "seed {seed}: {step:?}"
        );
    }
    let num_released = fake.released_ids().len();
    (
        stats.preemptions_total,
        num_released.saturating_sub(stats.preemptions_total as usize),
    )
}

/// Every configuration runs with both kinds of scheduling: each request gets exactly its
/// tokens (the fake's are a function of the prompt), so both give the same outputs.
#[tokio::test]
async fn small_random_configurations_never_deadlock_or_leak_with_async_scheduling() {
    check_random_configurations(true).await;
}

#[tokio::test]
async fn small_random_configurations_never_deadlock_or_leak_with_sync_scheduling() {
    check_random_configurations(false).await;
}

async fn check_random_configurations(async_scheduling: bool) {
    let (mut num_preemptions, mut num_cancel_releases) = (0, 0);
    for seed in 1..=12 {
        let (preemptions, cancel_releases) = run_configuration(seed, 0, async_scheduling).await;
        num_preemptions += preemptions;
        num_cancel_releases += cancel_releases;
    }
    assert!(
        num_preemptions > 0,
        "the configurations must put the cache under pressure"
    );
    assert!(
        num_cancel_releases > 0,
        "some cancelled requests were running"
    );
}
