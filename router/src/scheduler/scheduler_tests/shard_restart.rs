//! A shard group that crashes mid-generation (its state and KV cache gone, unreachable for a
//! while, then back empty): the scheduler waits, warms it up and replays every request, so
//! each still gets exactly its tokens, once, and no error.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_survive_a_shard_crash_and_are_replayed() {
    let fake = fake(4, 64);
    // Crash after 6 steps: some requests are decoding, some prefilling (chunks of 8).
    fake.crash_at_step(6, Duration::from_millis(300));
    let handle = spawn_scheduler(fake.clone(), config(&fake, 8, 8));
    let cases: Vec<(Vec<u32>, u32)> = (0..8u32)
        .map(|index| (prompt(3 + index as usize * 3, 100 + index * 50), 10))
        .collect();
    run_all_correct(&handle, &cases).await;
    let stats = wait_for_drain(&handle).await;
    assert_eq!(stats.shard_recoveries_total, 1);
    assert!(stats.replayed_requests_total > 0);
    assert!(!stats.shards_unreachable);
    assert_eq!(fake.num_warmups(), 1, "the restarted shard was warmed up");
    assert_eq!(fake.violations(), Vec::<String>::new());
}
