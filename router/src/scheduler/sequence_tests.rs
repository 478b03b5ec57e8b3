//! Sequence state transitions from hand-built shard results.

use std::time::Instant;

use tokio::sync::mpsc;

use super::*;
use crate::scheduler::interface::{EventReceiver, ShardFinish};

fn parameters(max_new_tokens: u32, prompt_logprobs: bool) -> proto::RequestParameters {
    proto::RequestParameters {
        stopping: Some(proto::StoppingParameters {
            max_new_tokens,
            ignore_eos: false,
        }),
        prompt_logprobs,
        ..Default::default()
    }
}

fn sequence(prompt: Vec<u32>, prompt_logprobs: bool) -> (Sequence, EventReceiver) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let request = GenerationRequest {
        input_ids: prompt,
        parameters: parameters(10, prompt_logprobs),
        received_at: Instant::now(),
        deadline: None,
        span: tracing::Span::none(),
    };
    (Sequence::new(7, request, sender), receiver)
}

fn chunk(num_cached_tokens: usize, num_tokens: usize, is_last_chunk: bool) -> ChunkPlan {
    ChunkPlan {
        request_id: 7,
        num_cached_tokens,
        num_tokens,
        is_last_chunk,
        num_new_blocks: 0,
    }
}

fn generation(token_ids: &[u32], prompt_logprobs: Vec<f32>, finish: i32) -> proto::Generation {
    proto::Generation {
        request_id: 7,
        tokens: token_ids
            .iter()
            .map(|&token_id| proto::GeneratedToken {
                token_id,
                logprob: -1.0,
                top_tokens: vec![],
            })
            .collect(),
        prompt_logprobs,
        finish_reason: finish,
        num_proposed_tokens: 0,
        error: String::new(),
    }
}

/// The request's entry in a step that is then sent (`expect_step`).
fn new_entry(sequence: &mut Sequence, chunk: &ChunkPlan, block_table: &[u32]) -> proto::NewRequest {
    let entry = sequence.step_entry(Some(chunk), block_table, 0, Instant::now());
    sequence.expect_step(Some(chunk));
    match entry {
        StepEntry::New(new) => new,
        other => panic!("expected a new request, got {other:?}"),
    }
}

fn running_entry(
    sequence: &mut Sequence,
    chunk: Option<&ChunkPlan>,
    block_table: &[u32],
) -> proto::RunningRequest {
    let entry = sequence.step_entry(chunk, block_table, 0, Instant::now());
    sequence.expect_step(chunk);
    match entry {
        StepEntry::Running(running) => running,
        other => panic!("expected a running request, got {other:?}"),
    }
}

fn drain(receiver: &mut EventReceiver) -> Vec<GenerationEvent> {
    std::iter::from_fn(|| receiver.try_recv().ok()).collect()
}

#[test]
fn chunks_concatenate_prompt_logprobs_and_prefill_done_comes_once() {
    let (mut sequence, mut receiver) = sequence(vec![1, 2, 3, 4, 5], true);
    let first = chunk(0, 3, false);
    let message = new_entry(&mut sequence, &first, &[0]);
    assert_eq!(message.token_ids, vec![1, 2, 3, 4, 5]);
    assert_eq!(
        (
            message.num_prompt_tokens,
            message.num_cached_tokens,
            message.num_scheduled_tokens
        ),
        (5, 0, 3)
    );
    assert!(
        message.parameters.is_some(),
        "a new request carries the parameters"
    );
    let outcome = sequence.apply_generation(
        Some(&first),
        Some(generation(&[], vec![f32::NAN, -0.2, -0.3], 0)),
    );
    assert_eq!(outcome, SequenceOutcome::Running);
    assert!(
        drain(&mut receiver).is_empty(),
        "no event before the prompt is done"
    );

    let last = chunk(3, 2, true);
    let message = running_entry(&mut sequence, Some(&last), &[0, 1]);
    assert_eq!(
        message,
        proto::RunningRequest {
            request_id: 7,
            new_token_ids: vec![],
            new_block_ids: vec![1],
            num_scheduled_tokens: 2,
            num_lookahead_tokens: 0,
            append_generated_tokens: false,
        },
        "later steps carry only what changed"
    );
    let outcome =
        sequence.apply_generation(Some(&last), Some(generation(&[6], vec![-0.4, -0.5], 0)));
    assert_eq!(outcome, SequenceOutcome::Running);
    let events = drain(&mut receiver);
    assert_eq!(events.len(), 2);
    match &events[0] {
        GenerationEvent::PrefillDone {
            prompt_logprobs, ..
        } => {
            assert_eq!(prompt_logprobs.len(), 5);
            assert!(prompt_logprobs[0].is_nan());
            assert_eq!(&prompt_logprobs[1..], &[-0.2, -0.3, -0.4, -0.5]);
        }
        other => panic!("expected PrefillDone, got {other:?}"),
    }
    assert!(matches!(&events[1], GenerationEvent::Token { token, finish: None } if token.id == 6));
    assert_eq!(sequence.num_computed_tokens(), 5);
    assert!(sequence.is_decoding());
    let decode = running_entry(&mut sequence, None, &[0, 1]);
    assert_eq!(
        (
            decode.new_token_ids,
            decode.new_block_ids,
            decode.num_scheduled_tokens
        ),
        (vec![6], vec![], 1),
        "a decode hands the shard the token it sampled"
    );
}

#[test]
fn preempted_request_resumes_with_its_generated_tokens() {
    let (mut sequence, mut receiver) = sequence(vec![1, 2, 3], true);
    let whole = chunk(0, 3, true);
    new_entry(&mut sequence, &whole, &[0]);
    sequence.apply_generation(
        Some(&whole),
        Some(generation(&[4], vec![f32::NAN, -1.0, -1.0], 0)),
    );
    for token_id in [5, 6] {
        running_entry(&mut sequence, None, &[0, 1]);
        assert_eq!(
            sequence.apply_generation(None, Some(generation(&[token_id], vec![], 0))),
            SequenceOutcome::Running
        );
    }
    assert_eq!(sequence.generated_token_ids(), &[4, 5, 6]);
    let streamed = drain(&mut receiver).len();
    assert_eq!(streamed, 4, "PrefillDone + 3 tokens");

    sequence.reset_for_preemption();
    assert_eq!(sequence.num_input_tokens(), 6);
    assert_eq!(
        (
            sequence.num_tokens(),
            sequence.num_computed_tokens(),
            sequence.is_decoding()
        ),
        (6, 0, false)
    );

    // Its first block is still cached: it restarts after it, as a new request to the shard.
    sequence.start_after_cached_prefix(4);
    let resumed = chunk(4, 2, true);
    let message = new_entry(&mut sequence, &resumed, &[0, 2]);
    assert_eq!(message.token_ids, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(
        (
            message.num_prompt_tokens,
            message.num_cached_tokens,
            message.num_scheduled_tokens
        ),
        (3, 4, 2)
    );
    let parameters = message
        .parameters
        .expect("a request resumed after a preemption has parameters");
    assert_eq!(
        parameters.stopping.map(|stopping| stopping.max_new_tokens),
        Some(10)
    );
    assert!(
        !parameters.prompt_logprobs,
        "prompt logprobs were already delivered"
    );

    let outcome = sequence.apply_generation(Some(&resumed), Some(generation(&[7], vec![], 2)));
    assert_eq!(
        outcome,
        SequenceOutcome::Left {
            needs_release: false
        }
    );
    let events = drain(&mut receiver);
    assert_eq!(
        events.len(),
        1,
        "no PrefillDone and no token re-sent after a resume"
    );
    assert!(
        matches!(&events[0], GenerationEvent::Token { token, finish: Some(ShardFinish::Length) } if token.id == 7)
    );
}

#[test]
fn preemption_during_prefill_restarts_prompt_logprobs() {
    let (mut sequence, mut receiver) = sequence(vec![1, 2, 3, 4], true);
    let first = chunk(0, 2, false);
    new_entry(&mut sequence, &first, &[0]);
    sequence.apply_generation(Some(&first), Some(generation(&[], vec![f32::NAN, -0.9], 0)));
    sequence.reset_for_preemption();
    assert!(
        sequence.wants_prompt_logprobs(),
        "so it will not start from the cache"
    );
    let whole = chunk(0, 4, true);
    let message = new_entry(&mut sequence, &whole, &[0]);
    let parameters = message.parameters.expect("parameters");
    assert!(parameters.prompt_logprobs);
    assert_eq!(message.num_prompt_tokens, 4);
    sequence.apply_generation(
        Some(&whole),
        Some(generation(&[5], vec![f32::NAN, -0.2, -0.3, -0.4], 0)),
    );
    match drain(&mut receiver).first() {
        Some(GenerationEvent::PrefillDone {
            prompt_logprobs, ..
        }) => {
            assert_eq!(
                prompt_logprobs.len(),
                4,
                "no duplicate logprobs from the first attempt"
            );
        }
        other => panic!("expected PrefillDone, got {other:?}"),
    }
}

#[test]
fn shard_errors_and_dropped_receivers_end_the_request() {
    let (mut failing, mut receiver) = sequence(vec![1, 2], false);
    let whole = chunk(0, 2, true);
    new_entry(&mut failing, &whole, &[0]);
    let mut rejected = generation(&[], vec![], 0);
    rejected.error = "block table too short".into();
    assert_eq!(
        failing.apply_generation(Some(&whole), Some(rejected)),
        SequenceOutcome::Left {
            needs_release: false
        }
    );
    assert!(matches!(
        drain(&mut receiver).as_slice(),
        [GenerationEvent::Error(GenerationError::Shard(message))] if message == "block table too short"
    ));

    let (mut cancelled, receiver) = sequence(vec![1, 2], false);
    new_entry(&mut cancelled, &whole, &[0]);
    drop(receiver);
    assert!(cancelled.is_cancelled());
    let outcome = cancelled.apply_generation(Some(&whole), Some(generation(&[3], vec![], 0)));
    assert_eq!(
        outcome,
        SequenceOutcome::Left {
            needs_release: true
        }
    );

    let (mut missing, _receiver) = sequence(vec![1, 2], false);
    new_entry(&mut missing, &whole, &[0]);
    assert_eq!(
        missing.apply_generation(Some(&whole), None),
        SequenceOutcome::Left {
            needs_release: true
        }
    );
}

/// Asynchronous scheduling: steps are entered before the answers of the ones before them
/// come; the shard appends the tokens the router has not seen, and the answers then fill
/// them in, in order.
#[test]
fn steps_planned_ahead_of_their_predecessors_answers_let_the_shard_append_its_tokens() {
    let (mut sequence, mut receiver) = sequence(vec![1, 2, 3], false);
    let whole = chunk(0, 3, true);
    new_entry(&mut sequence, &whole, &[0]);
    // The prompt's step is in flight: one pending token, counted but unknown.
    assert_eq!(
        (
            sequence.num_tokens(),
            sequence.num_computed_tokens(),
            sequence.num_confirmed_tokens()
        ),
        (4, 3, 0)
    );
    let second = running_entry(&mut sequence, None, &[0]);
    assert_eq!(
        (
            second.new_token_ids.clone(),
            second.append_generated_tokens,
            second.num_scheduled_tokens
        ),
        (vec![], true, 1),
        "the shard appends the token it sampled in the prompt's step"
    );
    assert_eq!(sequence.num_tokens(), 5, "two pending tokens");
    assert_eq!(
        sequence.apply_generation(Some(&whole), Some(generation(&[4], vec![], 0))),
        SequenceOutcome::Running
    );
    assert_eq!(sequence.num_confirmed_tokens(), 3);
    let third = running_entry(&mut sequence, None, &[0, 1]);
    assert_eq!(
        (
            third.new_token_ids.clone(),
            third.append_generated_tokens,
            third.new_block_ids.clone()
        ),
        (vec![], true, vec![1])
    );
    assert_eq!(
        sequence.apply_generation(None, Some(generation(&[5], vec![], 0))),
        SequenceOutcome::Running
    );
    assert_eq!(sequence.generated_token_ids(), &[4, 5]);
    assert_eq!(sequence.num_confirmed_tokens(), 4);
    // The third step's answer: nothing is pending any more.
    assert_eq!(
        sequence.apply_generation(None, Some(generation(&[6], vec![], 0))),
        SequenceOutcome::Running
    );
    let fourth = running_entry(&mut sequence, None, &[0, 1]);
    assert_eq!(
        (fourth.new_token_ids.clone(), fourth.append_generated_tokens),
        (vec![6], false),
        "with every answer in, the router sends the token itself"
    );
    let tokens: Vec<u32> = drain(&mut receiver)
        .into_iter()
        .filter_map(|event| match event {
            GenerationEvent::Token { token, .. } => Some(token.id),
            _ => None,
        })
        .collect();
    assert_eq!(tokens, vec![4, 5, 6]);
}
