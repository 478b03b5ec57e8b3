//! Requests past their deadline: a running one ends with a timeout error and frees its
//! blocks (the shard is told to forget it); a queued one fails without ever reaching a shard.

use super::*;
use crate::scheduler::interface::TimeoutPhase;

fn with_deadline(mut request: GenerationRequest, budget: Duration) -> GenerationRequest {
    request.deadline = Some(request.received_at + budget);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_request_past_its_deadline_fails_and_frees_its_blocks() {
    let fake = slow_fake(64, Duration::from_millis(5));
    let handle = spawn_scheduler(fake.clone(), config(&fake, 16, 8));
    // 60 tokens at >= 5 ms a step take >= 300 ms: far past the 60 ms budget.
    let timed = handle
        .submit(with_deadline(
            request(prompt(6, 10), 60, false),
            Duration::from_millis(60),
        ))
        .expect("admitted");
    let untimed = handle
        .submit(request(prompt(5, 20), 12, false))
        .expect("admitted");
    let (timed, untimed) = futures::join!(collect(timed), collect(untimed));
    match &timed.error {
        Some(GenerationError::TimedOut { budget_s, phase }) => {
            assert_eq!(*phase, TimeoutPhase::Generating);
            assert!((budget_s - 0.06).abs() < 1e-9, "budget {budget_s}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(timed.finish.is_none());
    assert!(timed.token_ids.len() < 60, "it ran to the end");
    let expected = expected_tokens(&prompt(6, 10), 60, VOCAB_SIZE, &[EOS_TOKEN_ID]);
    assert_eq!(timed.token_ids[..], expected[..timed.token_ids.len()]);
    assert_eq!(timed.num_events_after_end, 0);
    assert_correct(&untimed, &prompt(5, 20), 12);
    wait_for_drain(&handle).await;
    assert_eq!(
        fake.num_live_requests(),
        0,
        "the shard still holds the timed-out request"
    );
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_past_its_deadline_never_reaches_the_shard() {
    let fake = slow_fake(64, Duration::from_millis(5));
    // One request at a time: the second waits behind the first's 30 steps.
    let handle = spawn_scheduler(fake.clone(), config(&fake, 16, 1));
    let first = handle
        .submit(request(prompt(4, 30), 30, false))
        .expect("admitted");
    let queued = handle
        .submit(with_deadline(
            request(prompt(4, 40), 5, false),
            Duration::from_millis(40),
        ))
        .expect("admitted");
    let (first, queued) = futures::join!(collect(first), collect(queued));
    assert_correct(&first, &prompt(4, 30), 30);
    assert!(
        matches!(
            queued.error,
            Some(GenerationError::TimedOut {
                phase: TimeoutPhase::Queued,
                ..
            })
        ),
        "{:?}",
        queued.error
    );
    assert_eq!(queued.num_prefill_done, 0);
    assert!(queued.token_ids.is_empty());
    wait_for_drain(&handle).await;
    let num_chunks: usize = fake.steps().iter().map(|step| step.num_chunks).sum();
    assert_eq!(num_chunks, 1, "only the first request was ever prefilled");
    assert_eq!(fake.violations(), Vec::<String>::new());
}
