//! Failures and refusals: a failed shard step fails its requests (the next one succeeds), a
//! per-request shard error fails only that request, a full queue refuses at once, and a request
//! larger than the whole KV cache fails before reaching a shard.

use super::*;

#[tokio::test]
async fn shard_step_failure_fails_its_requests_and_the_next_succeeds() {
    let fake = fake(4, 256);
    let handle = spawn_scheduler(fake.clone(), config(&fake, 64, 8));
    let mut receiver = handle
        .submit(request(prompt(4, 10), 200, false))
        .expect("admitted");
    let mut num_tokens = 0;
    while num_tokens < 2 {
        if let Some(GenerationEvent::Token { .. }) = receiver.recv().await {
            num_tokens += 1;
        }
    }
    fake.fail_next_steps(1);
    let rest = collect(receiver).await;
    assert!(
        matches!(rest.error, Some(GenerationError::Shard(_))),
        "got {rest:?}"
    );
    assert!(rest.finish.is_none());
    assert_eq!(rest.num_events_after_end, 0);
    assert_eq!(
        fake.num_clears(),
        1,
        "the shard is cleared after a failed step"
    );
    wait_for_drain(&handle).await;
    run_all_correct(&handle, &[(prompt(6, 30), 5)]).await;
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn per_request_shard_error_fails_only_that_request() {
    let fake = fake(4, 256);
    let handle = spawn_scheduler(fake.clone(), config(&fake, 64, 8));
    let poisoned = handle
        .submit(request(vec![666, 1, 2], 5, false))
        .expect("admitted");
    let healthy = handle
        .submit(request(prompt(3, 40), 5, false))
        .expect("admitted");
    let (poisoned, healthy) = futures::join!(collect(poisoned), collect(healthy));
    assert!(
        matches!(&poisoned.error, Some(GenerationError::Shard(message)) if message.contains("poisoned"))
    );
    assert!(poisoned.token_ids.is_empty());
    assert_correct(&healthy, &prompt(3, 40), 5);
    wait_for_drain(&handle).await;
    assert_eq!(
        fake.violations().len(),
        1,
        "only the poisoned request was rejected"
    );
}

#[tokio::test]
async fn queue_bound_refuses_at_once() {
    let fake = fake(4, 64);
    let config = SchedulerConfig {
        max_total_tokens: 64,
        max_waiting_requests: 2,
        prefix_caching: true,
        ..config(&fake, 64, 8)
    };
    let handle = spawn_scheduler(fake.clone(), config);
    // On this single-threaded runtime the scheduler cannot run before the next await, so
    // both accepted requests are still waiting.
    let first = handle
        .submit(request(prompt(3, 1), 3, false))
        .expect("admitted");
    let second = handle
        .submit(request(prompt(3, 2), 3, false))
        .expect("admitted");
    assert_eq!(handle.stats().waiting_requests, 2);
    match handle.submit(request(prompt(3, 3), 3, false)) {
        Err(AdmissionError::QueueFull { max_waiting }) => assert_eq!(max_waiting, 2),
        other => panic!("expected QueueFull, got {other:?}"),
    }
    let (first, second) = futures::join!(collect(first), collect(second));
    assert_correct(&first, &prompt(3, 1), 3);
    assert_correct(&second, &prompt(3, 2), 3);
    wait_for_drain(&handle).await;
    assert!(
        handle.submit(request(prompt(3, 3), 3, false)).is_ok(),
        "room again"
    );
}

#[tokio::test]
async fn request_larger_than_the_cache_fails_immediately() {
    let fake = fake(4, 12);
    let handle = spawn_scheduler(fake.clone(), config(&fake, 16, 8));
    let received = collect(
        handle
            .submit(request(prompt(40, 5), 10, false))
            .expect("answered"),
    )
    .await;
    match received.error {
        Some(GenerationError::TooLargeForCache {
            needed_blocks,
            total_blocks,
        }) => {
            assert_eq!((needed_blocks, total_blocks), (13, 12));
        }
        other => panic!("expected TooLargeForCache, got {other:?}"),
    }
    assert_eq!(received.num_prefill_done, 0);
    // Exactly the whole cache is fine.
    run_all_correct(&handle, &[(prompt(40, 5), 8)]).await;
}
