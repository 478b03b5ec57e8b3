//! Sequence state transitions from hand-built shard results.

use std::time::Instant;

use tokio::sync::mpsc;

use super::*;
use crate::scheduler::interface::EventReceiver;

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
        error: String::new(),
    }
}

fn drain(receiver: &mut EventReceiver) -> Vec<GenerationEvent> {
    std::iter::from_fn(|| receiver.try_recv().ok()).collect()
}

#[test]
fn chunks_concatenate_prompt_logprobs_and_prefill_done_comes_once() {
    let (mut sequence, mut receiver) = sequence(vec![1, 2, 3, 4, 5], true);
    let first = chunk(0, 3, false);
    let message = sequence.prefill_chunk(&first, Instant::now());
    assert_eq!(message.input_ids, vec![1, 2, 3]);
    assert!(
        message.parameters.is_some(),
        "first chunk carries the parameters"
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
    let message = sequence.prefill_chunk(&last, Instant::now());
    assert_eq!(
        (message.input_ids.clone(), message.num_cached_tokens),
        (vec![4, 5], 3)
    );
    assert!(
        message.parameters.is_none(),
        "later chunks carry no parameters"
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
    assert!(sequence.running_view().is_decoding);
}

#[test]
fn preempted_request_resumes_with_its_generated_tokens() {
    let (mut sequence, mut receiver) = sequence(vec![1, 2, 3], true);
    let whole = chunk(0, 3, true);
    sequence.prefill_chunk(&whole, Instant::now());
    sequence.apply_generation(
        Some(&whole),
        Some(generation(&[4], vec![f32::NAN, -1.0, -1.0], 0)),
    );
    for token_id in [5, 6] {
        assert_eq!(
            sequence.apply_generation(None, Some(generation(&[token_id], vec![], 0))),
            SequenceOutcome::Running
        );
    }
    assert_eq!(sequence.generated_token_ids(), &[4, 5, 6]);
    let streamed = drain(&mut receiver).len();
    assert_eq!(streamed, 4, "PrefillDone + 3 tokens");

    sequence.block_table.clear();
    sequence.reset_for_preemption();
    assert_eq!(sequence.waiting_view().num_input_tokens, 6);
    let view = sequence.running_view();
    assert_eq!(
        (view.num_tokens, view.num_computed_tokens, view.is_decoding),
        (6, 0, false)
    );

    let resumed = chunk(0, 6, true);
    let message = sequence.prefill_chunk(&resumed, Instant::now());
    assert_eq!(message.input_ids, vec![1, 2, 3, 4, 5, 6]);
    let parameters = message
        .parameters
        .expect("first chunk after a preemption has parameters");
    assert_eq!(parameters.resumed_generated_tokens, 3);
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
    sequence.prefill_chunk(&first, Instant::now());
    sequence.apply_generation(Some(&first), Some(generation(&[], vec![f32::NAN, -0.9], 0)));
    sequence.block_table.clear();
    sequence.reset_for_preemption();
    let whole = chunk(0, 4, true);
    let message = sequence.prefill_chunk(&whole, Instant::now());
    let parameters = message.parameters.expect("parameters");
    assert!(parameters.prompt_logprobs);
    assert_eq!(parameters.resumed_generated_tokens, 0);
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
    failing.prefill_chunk(&whole, Instant::now());
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
    cancelled.prefill_chunk(&whole, Instant::now());
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
    missing.prefill_chunk(&whole, Instant::now());
    assert_eq!(
        missing.apply_generation(Some(&whole), None),
        SequenceOutcome::Left {
            needs_release: true
        }
    );
}
