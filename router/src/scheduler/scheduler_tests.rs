//! The whole scheduler (task, batcher, KV ledger) against the in-process fake shard.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;

use super::fake_shard::{expected_tokens, fake_prompt_logprob, FakeShard, FakeShardConfig};
use super::interface::{
    AdmissionError, EventReceiver, GenerationError, GenerationEvent, GenerationRequest,
    RequestSubmitter, SchedulerConfig, SchedulerStats, ShardFinish,
};
use super::{spawn_scheduler, SchedulerHandle};
use crate::proto;

mod async_scheduling;
mod deadlines;
mod failures;
mod prefix_caching;
mod shard_restart;
mod speculation;
mod stress;
mod traces;

const VOCAB_SIZE: u32 = 1000;
const EOS_TOKEN_ID: u32 = 999;

fn fake(block_size: usize, num_blocks: usize) -> Arc<FakeShard> {
    Arc::new(FakeShard::new(FakeShardConfig {
        vocab_size: VOCAB_SIZE,
        eos_token_ids: vec![EOS_TOKEN_ID],
        block_size,
        num_blocks,
        poison_token_id: Some(666),
        step_delay: Duration::ZERO,
    }))
}

/// A fake whose every step takes `step_delay` (time for tests to act between steps), with
/// no poisoned prompt.
fn slow_fake(num_blocks: usize, step_delay: Duration) -> Arc<FakeShard> {
    Arc::new(FakeShard::new(FakeShardConfig {
        vocab_size: VOCAB_SIZE,
        eos_token_ids: vec![EOS_TOKEN_ID],
        block_size: 4,
        num_blocks,
        poison_token_id: None,
        step_delay,
    }))
}

fn config(
    fake: &FakeShard,
    max_batch_prefill_tokens: usize,
    max_batch_size: usize,
) -> SchedulerConfig {
    let fake_config = fake.config();
    SchedulerConfig {
        block_size: fake_config.block_size,
        num_blocks: fake_config.num_blocks,
        max_batch_prefill_tokens,
        max_batch_total_tokens: fake_config.block_size * fake_config.num_blocks,
        max_batch_size,
        max_total_tokens: 64,
        max_waiting_requests: 64,
        prefix_caching: true,
        num_speculative_tokens: 0,
        max_loras_per_batch: 8,
        async_scheduling: true,
    }
}

fn request(prompt: Vec<u32>, max_new_tokens: u32, prompt_logprobs: bool) -> GenerationRequest {
    GenerationRequest {
        input_ids: prompt,
        parameters: proto::RequestParameters {
            stopping: Some(proto::StoppingParameters {
                max_new_tokens,
                ignore_eos: false,
            }),
            prompt_logprobs,
            ..Default::default()
        },
        received_at: Instant::now(),
        deadline: None,
        span: tracing::Span::none(),
    }
}

/// Everything a request's receiver got, in order.
#[derive(Debug, Default)]
struct Received {
    num_prefill_done: usize,
    prompt_logprobs: Vec<f32>,
    token_ids: Vec<u32>,
    finish: Option<ShardFinish>,
    error: Option<GenerationError>,
    /// Events after the one that ended the request (must stay 0).
    num_events_after_end: usize,
}

async fn collect(mut receiver: EventReceiver) -> Received {
    let mut received = Received::default();
    while let Some(event) = receiver.recv().await {
        if received.finish.is_some() || received.error.is_some() {
            received.num_events_after_end += 1;
        }
        match event {
            GenerationEvent::PrefillDone {
                prompt_logprobs, ..
            } => {
                received.num_prefill_done += 1;
                received.prompt_logprobs = prompt_logprobs;
            }
            GenerationEvent::Token { token, finish } => {
                received.token_ids.push(token.id);
                received.finish = finish;
            }
            GenerationEvent::Error(error) => received.error = Some(error),
        }
    }
    received
}

fn assert_correct(received: &Received, prompt: &[u32], max_new_tokens: u32) {
    let expected = expected_tokens(prompt, max_new_tokens as usize, VOCAB_SIZE, &[EOS_TOKEN_ID]);
    assert!(
        received.error.is_none(),
        "unexpected error {:?}",
        received.error
    );
    assert_eq!(received.num_prefill_done, 1, "PrefillDone exactly once");
    assert_eq!(
        received.token_ids,
        expected,
        "tokens for prompt ending {:?}",
        prompt.last()
    );
    let expected_finish = if expected.last() == Some(&EOS_TOKEN_ID) {
        ShardFinish::Eos
    } else {
        ShardFinish::Length
    };
    assert_eq!(received.finish, Some(expected_finish));
    assert_eq!(received.num_events_after_end, 0);
}

/// Submits every (prompt, max_new_tokens) case at once; checks each got exactly its tokens.
async fn run_all_correct(handle: &SchedulerHandle, cases: &[(Vec<u32>, u32)]) -> Vec<Received> {
    let receivers: Vec<EventReceiver> = cases
        .iter()
        .map(|(prompt, max_new_tokens)| {
            handle
                .submit(request(prompt.clone(), *max_new_tokens, false))
                .expect("admitted")
        })
        .collect();
    let results = join_all(receivers.into_iter().map(collect)).await;
    for ((prompt, max_new_tokens), received) in cases.iter().zip(&results) {
        assert_correct(received, prompt, *max_new_tokens);
    }
    results
}

/// Waits (polling, bounded by a generous guard) until `is_done` holds for the stats.
async fn wait_for_stats(
    handle: &SchedulerHandle,
    is_done: impl Fn(&SchedulerStats) -> bool,
) -> SchedulerStats {
    for _ in 0..10_000 {
        let stats = handle.stats();
        if is_done(&stats) {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("scheduler never settled: {:?}", handle.stats());
}

async fn wait_for_drain(handle: &SchedulerHandle) -> SchedulerStats {
    wait_for_stats(handle, |stats| {
        stats.running_requests == 0
            && stats.waiting_requests == 0
            && stats.kv_blocks_free == stats.kv_blocks_total
    })
    .await
}

/// Prompt of `num_tokens` tokens ending with `last`.
fn prompt(num_tokens: usize, last: u32) -> Vec<u32> {
    (0..num_tokens as u32)
        .map(|offset| (last + VOCAB_SIZE - num_tokens as u32 + 1 + offset) % VOCAB_SIZE)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_requests_are_all_correct() {
    let fake = fake(4, 1024);
    let handle = spawn_scheduler(fake.clone(), config(&fake, 32, 16));
    let cases: Vec<(Vec<u32>, u32)> = (0..64u32)
        .map(|index| {
            let num_prompt_tokens = 1 + (index as usize * 7) % 60; // up to 60: chunked at 32
                                                                   // Some prompts end near EOS so generation stops early.
            let last = if index % 5 == 0 {
                990 + index % 8
            } else {
                index * 13 % 900
            };
            (prompt(num_prompt_tokens, last), 1 + index % 20)
        })
        .collect();
    let results = run_all_correct(&handle, &cases).await;
    assert!(results
        .iter()
        .any(|received| received.finish == Some(ShardFinish::Eos)));
    assert_eq!(fake.violations(), Vec::<String>::new());
    for step in fake.steps() {
        assert!(
            step.num_prefill_tokens <= 32,
            "prefill budget exceeded: {step:?}"
        );
        assert!(
            step.num_chunks + step.num_decodes <= 16,
            "batch size exceeded: {step:?}"
        );
    }
    assert!(
        fake.steps()
            .iter()
            .any(|step| step.num_chunks > 0 && step.num_decodes > 0),
        "mixed steps"
    );
    let stats = wait_for_drain(&handle).await;
    assert_eq!(fake.num_live_requests(), 0);
    assert!(stats.steps_total > 0 && stats.forward_ns_total > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_cache_preempts_and_every_request_completes() {
    let fake = fake(4, 12); // 48 tokens of KV for 32 requests
    let handle = spawn_scheduler(fake.clone(), config(&fake, 16, 32));
    let cases: Vec<(Vec<u32>, u32, bool)> = (0..32u32)
        .map(|index| {
            let num_prompt_tokens = 3 + index as usize % 8;
            (
                prompt(num_prompt_tokens, 100 + index * 17),
                8 + index % 13,
                index % 2 == 0,
            )
        })
        .collect();
    let receivers: Vec<EventReceiver> = cases
        .iter()
        .map(|(prompt, max_new_tokens, logprobs)| {
            handle
                .submit(request(prompt.clone(), *max_new_tokens, *logprobs))
                .expect("admitted")
        })
        .collect();
    let results = join_all(receivers.into_iter().map(collect)).await;
    for ((prompt, max_new_tokens, logprobs), received) in cases.iter().zip(&results) {
        assert_correct(received, prompt, *max_new_tokens);
        if *logprobs {
            assert_eq!(received.prompt_logprobs.len(), prompt.len());
            assert!(received.prompt_logprobs[0].is_nan());
            for (position, &token_id) in prompt.iter().enumerate().skip(1) {
                assert_eq!(
                    received.prompt_logprobs[position],
                    fake_prompt_logprob(position, token_id)
                );
            }
        } else {
            assert!(received.prompt_logprobs.is_empty());
        }
    }
    assert_eq!(fake.violations(), Vec::<String>::new());
    let stats = wait_for_drain(&handle).await;
    assert!(
        stats.preemptions_total > 0,
        "the tiny cache must force preemptions"
    );
    assert!(fake.steps().iter().all(|step| step.num_blocks_in_use <= 12));
    assert_eq!(fake.num_live_requests(), 0);
}

#[tokio::test]
async fn cancellation_frees_blocks_and_releases_the_request() {
    let fake = fake(4, 256);
    let handle = spawn_scheduler(fake.clone(), config(&fake, 64, 8));
    let mut receiver = handle
        .submit(request(prompt(4, 10), 500, false))
        .expect("admitted");
    let mut num_tokens = 0;
    while num_tokens < 3 {
        match receiver.recv().await {
            Some(GenerationEvent::Token { .. }) => num_tokens += 1,
            Some(GenerationEvent::PrefillDone { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let busy = handle.stats();
    assert!(
        busy.kv_blocks_free < busy.kv_blocks_total,
        "the request holds blocks"
    );
    drop(receiver);
    wait_for_drain(&handle).await;
    assert_eq!(
        fake.released_ids(),
        vec![0],
        "the shard was told to forget the request"
    );
    assert_eq!(fake.num_live_requests(), 0);
    // The scheduler keeps serving.
    run_all_correct(&handle, &[(prompt(5, 20), 4)]).await;
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn idle_scheduler_takes_no_steps() {
    let fake = fake(4, 64);
    let handle = spawn_scheduler(fake.clone(), config(&fake, 64, 8));
    let done = collect(
        handle
            .submit(request(prompt(3, 7), 4, false))
            .expect("admitted"),
    )
    .await;
    assert_correct(&done, &prompt(3, 7), 4);
    let settled = wait_for_drain(&handle).await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(handle.stats().steps_total, settled.steps_total);
    assert_eq!(fake.steps().len() as u64, settled.steps_total);
}
