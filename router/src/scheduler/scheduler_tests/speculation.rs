//! Speculative decoding (`--speculate`) through the whole scheduler: the router reserves
//! lookahead slots after each decode, the fake shard accepts a pseudo-random number of its
//! proposals and writes garbage into the rejected slots, and every request still gets exactly
//! its tokens, within max_new_tokens, with no rejected slot ever treated as computed (the fake
//! checks every cached token a later request is given).

use super::stress::run_configuration;
use super::*;

const NUM_SPECULATIVE_TOKENS: usize = 3;

fn speculative_config(fake: &FakeShard, num_speculative_tokens: usize) -> SchedulerConfig {
    SchedulerConfig {
        num_speculative_tokens,
        ..config(fake, 32, 16)
    }
}

fn cases() -> Vec<(Vec<u32>, u32)> {
    (0..48u32)
        .map(|index| {
            let num_prompt_tokens = 1 + (index as usize * 5) % 40;
            // Some prompts run into EOS within a run of accepted proposals.
            let last = if index % 4 == 0 {
                992 + index % 6
            } else {
                index * 17 % 900
            };
            (prompt(num_prompt_tokens, last), 1 + index % 23)
        })
        .collect()
}

/// Runs `cases` concurrently; returns the scheduler's stats once drained.
async fn run_all(fake: &Arc<FakeShard>, num_speculative_tokens: usize) -> SchedulerStats {
    let handle = spawn_scheduler(
        fake.clone(),
        speculative_config(fake, num_speculative_tokens),
    );
    let cases = cases();
    run_all_correct(&handle, &cases).await;
    // A second wave with the same prompts: its prefix-cache hits include blocks the first
    // wave filled while speculating, so a garbage slot counted as computed would show.
    for (prompt, max_new_tokens) in cases.iter().take(8) {
        let receiver = handle
            .submit(request(prompt.clone(), *max_new_tokens, false))
            .expect("admitted");
        assert_correct(&collect(receiver).await, prompt, *max_new_tokens);
    }
    assert_eq!(fake.violations(), Vec::<String>::new());
    wait_for_drain(&handle).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speculating_requests_get_exactly_their_tokens_in_fewer_steps() {
    let plain = run_all(&fake(4, 1024), 0).await;
    let speculative = run_all(&fake(4, 1024), NUM_SPECULATIVE_TOKENS).await;
    assert_eq!(plain.speculative_proposed_tokens_total, 0);
    assert!(speculative.speculative_proposed_tokens_total > 0);
    assert!(
        speculative.speculative_accepted_tokens_total > 0
            && speculative.speculative_accepted_tokens_total
                < speculative.speculative_proposed_tokens_total,
        "some proposals accepted, some rejected: {speculative:?}"
    );
    let histogram = &speculative.speculative_accepted_per_decode;
    assert_eq!(
        histogram.sum as u64,
        speculative.speculative_accepted_tokens_total
    );
    assert!(
        speculative.steps_total < plain.steps_total,
        "accepted proposals save steps: {} vs {}",
        speculative.steps_total,
        plain.steps_total
    );
}

#[tokio::test]
async fn no_lookahead_past_max_new_tokens() {
    let fake = fake(4, 64);
    let handle = spawn_scheduler(
        fake.clone(),
        speculative_config(&fake, NUM_SPECULATIVE_TOKENS),
    );
    // Two new tokens: the first comes from the prefill, the second from a decode that must
    // not get lookahead slots (it could only overshoot).
    let prompt = prompt(6, 100);
    let receiver = handle
        .submit(request(prompt.clone(), 2, false))
        .expect("admitted");
    assert_correct(&collect(receiver).await, &prompt, 2);
    let stats = wait_for_drain(&handle).await;
    assert_eq!(stats.speculative_proposed_tokens_total, 0);
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn speculation_under_memory_pressure_never_deadlocks_or_leaks() {
    let mut num_preemptions = 0;
    for seed in 1..=12 {
        let (preemptions, _) = run_configuration(seed, NUM_SPECULATIVE_TOKENS, true).await;
        num_preemptions += preemptions;
    }
    assert!(num_preemptions > 0, "the cache must be under pressure");
}
