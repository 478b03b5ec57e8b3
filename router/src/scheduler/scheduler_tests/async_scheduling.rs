//! Asynchronous scheduling against the fake shard: the next step really is sent before the
//! previous one answered, the shard appends the tokens it generated, and what a step in
//! flight cannot know (a request that finishes by EOS, a block whose last token was never
//! computed) changes no output and poisons no cache. Joining, leaving, preempted and
//! cancelled requests under both kinds of scheduling: `stress.rs`.

use super::*;

fn scheduling_config(fake: &FakeShard, async_scheduling: bool) -> SchedulerConfig {
    SchedulerConfig {
        async_scheduling,
        ..config(fake, 64, 8)
    }
}

/// Steps long enough that the router plans the next one while one runs.
fn stepping_fake() -> Arc<FakeShard> {
    slow_fake(256, Duration::from_millis(3))
}

#[tokio::test]
async fn the_next_step_is_sent_while_the_shard_computes_the_previous_one() {
    for async_scheduling in [true, false] {
        let fake = stepping_fake();
        let handle = spawn_scheduler(fake.clone(), scheduling_config(&fake, async_scheduling));
        run_all_correct(&handle, &[(prompt(6, 10), 12), (prompt(9, 300), 8)]).await;
        let stats = wait_for_drain(&handle).await;
        let num_appending: usize = fake.steps().iter().map(|step| step.num_appending).sum();
        if async_scheduling {
            assert_eq!(fake.max_steps_in_flight(), 2);
            // All but the first (nothing ahead of it), and the odd one after a wait.
            assert!(
                stats.steps_sent_ahead_total + 2 >= stats.steps_total,
                "{stats:?}"
            );
            assert!(
                num_appending >= 12,
                "decodes appended the shard's own tokens: {num_appending}"
            );
        } else {
            assert_eq!(fake.max_steps_in_flight(), 1);
            assert_eq!(num_appending, 0);
            assert_eq!(stats.steps_sent_ahead_total, 0);
        }
        assert_eq!(fake.violations(), Vec::<String>::new());
    }
}

#[tokio::test]
async fn speculation_turns_asynchronous_scheduling_off() {
    let fake = stepping_fake();
    let config = SchedulerConfig {
        num_speculative_tokens: 2,
        ..scheduling_config(&fake, true)
    };
    let handle = spawn_scheduler(fake.clone(), config);
    run_all_correct(&handle, &[(prompt(5, 20), 10)]).await;
    assert_eq!(fake.max_steps_in_flight(), 1);
}

/// Requests that stop at EOS after a few tokens, beside one that keeps going: the step
/// after each EOS was already on its way and names the finished request, which the shard
/// rejects as unknown; nobody sees that answer and every block comes back.
#[tokio::test]
async fn requests_finishing_by_eos_get_exactly_their_tokens() {
    let fake = stepping_fake();
    let handle = spawn_scheduler(fake.clone(), scheduling_config(&fake, true));
    let cases: Vec<(Vec<u32>, u32)> = vec![
        (prompt(7, 996), 20),
        (prompt(3, 990), 20),
        (prompt(12, 50), 30),
        (prompt(4, 998), 5),
    ];
    let results = run_all_correct(&handle, &cases).await;
    assert_eq!(results[0].token_ids, vec![997, 998, EOS_TOKEN_ID]);
    assert_eq!(results[3].token_ids, vec![EOS_TOKEN_ID]);
    wait_for_drain(&handle).await;
    assert_eq!(fake.violations(), Vec::<String>::new());
    assert_eq!(fake.num_live_requests(), 0);
}

/// The EOS that ends the first turn is the last token of a block. Its K/V was never
/// computed (the step that would have computed it was rejected: the request had finished),
/// so that block must not enter the prefix cache although the router knew its tokens; the
/// fake checks every cached position a later request is given.
#[tokio::test]
async fn a_block_ending_in_an_uncomputed_eos_is_not_cached() {
    for async_scheduling in [true, false] {
        let fake = stepping_fake();
        let handle = spawn_scheduler(fake.clone(), scheduling_config(&fake, async_scheduling));
        // 8 prompt tokens ending at 995: the answer 996, 997, 998, EOS fills block 2.
        let first_prompt = prompt(8, 995);
        let first = run_all_correct(&handle, &[(first_prompt.clone(), 10)]).await;
        assert_eq!(first[0].token_ids, vec![996, 997, 998, EOS_TOKEN_ID]);
        let mut second_prompt = first_prompt;
        second_prompt.extend(&first[0].token_ids);
        second_prompt.extend([3, 1, 4]);
        run_all_correct(&handle, &[(second_prompt, 3)]).await;
        let stats = wait_for_drain(&handle).await;
        assert_eq!(
            stats.prefix_cache_hit_tokens_total, 8,
            "blocks 0 and 1 are reused, block 2 is not (async: {async_scheduling})"
        );
        assert_eq!(fake.violations(), Vec::<String>::new());
    }
}
