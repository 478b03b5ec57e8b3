use std::time::Duration;

use super::*;
use crate::scheduler::interface::GenerationError;
use crate::testing::tiny_tokenizer::{byte_level_tokenizer, ids_of, special_id, EOS};

fn context() -> GenerationContext {
    GenerationContext {
        tokenizer: Arc::new(byte_level_tokenizer()),
        metrics: Arc::default(),
    }
}

fn token(id: u32, finish: Option<ShardFinish>) -> GenerationEvent {
    GenerationEvent::Token {
        token: Token {
            id,
            logprob: -0.5,
            top_tokens: vec![(id, -0.5)],
        },
        finish,
    }
}

/// Feeds `ids` (the last one finishing with `finish`) and collects every step.
fn run(processor: &mut TokenProcessor, ids: &[u32], finish: ShardFinish) -> Vec<TokenStep> {
    let last = ids.len() - 1;
    ids.iter()
        .enumerate()
        .map_while(|(i, &id)| {
            let event = token(id, (i == last).then_some(finish));
            let step = processor
                .process(event)
                .expect("no error")
                .expect("a token step");
            Some(step)
        })
        .collect()
}

#[test]
fn text_pieces_add_up_and_eos_is_special() {
    let context = context();
    let mut processor = TokenProcessor::new(&context, &[1, 2], Vec::new(), Instant::now());
    let prefill = GenerationEvent::PrefillDone {
        prompt_logprobs: vec![f32::NAN, -1.0],
        queue_time: Duration::from_millis(7),
    };
    assert_eq!(processor.process(prefill).expect("ok"), None);
    let mut ids = ids_of(&context.tokenizer, " 日本 😀 ok");
    let eos = special_id(&context.tokenizer, EOS);
    ids.push(eos);
    let steps = run(&mut processor, &ids, ShardFinish::Eos);

    let texts: String = steps
        .iter()
        .filter(|s| !s.token.special)
        .map(|s| s.token.text.as_str())
        .collect();
    assert_eq!(texts, " 日本 😀 ok");
    assert_eq!(processor.generated_text(), " 日本 😀 ok");
    let last = steps.last().expect("steps");
    assert_eq!((last.token.text.as_str(), last.token.special), (EOS, true));
    assert_eq!(last.finish, Some(FinishReason::EndOfSequenceToken));
    assert!(steps[..steps.len() - 1].iter().all(|s| s.finish.is_none()));
    assert_eq!(processor.generated_tokens(), ids.len() as u32);
    assert_eq!(
        steps.iter().map(|s| s.index).collect::<Vec<_>>(),
        (0..ids.len() as u32).collect::<Vec<_>>()
    );
    assert_eq!(processor.queue_time(), Duration::from_millis(7));
    assert_eq!(processor.prompt_logprobs().len(), 2);
    // Top tokens are decoded one by one.
    assert_eq!(last.top_tokens[0].text, EOS);
}

#[test]
fn stop_sequence_across_tokens_ends_the_text_at_the_stop() {
    let context = context();
    let mut processor = TokenProcessor::new(&context, &[1], vec!["wor".into()], Instant::now());
    // "Hello", " world", ... : the stop ends inside " world".
    let ids = ids_of(&context.tokenizer, "Hello world and more");
    let mut steps = Vec::new();
    for &id in &ids {
        let step = processor
            .process(token(id, None))
            .expect("ok")
            .expect("step");
        let done = step.finish.is_some();
        steps.push(step);
        if done {
            break;
        }
    }
    assert_eq!(processor.finish(), Some(FinishReason::StopSequence));
    assert_eq!(processor.generated_text(), "Hello wor");
    let streamed: String = steps.iter().map(|s| s.token.text.as_str()).collect();
    assert_eq!(
        streamed, "Hello wor",
        "the streamed pieces end where generated_text ends"
    );
    // Later events (before the receiver is dropped) change nothing.
    assert_eq!(processor.process(token(ids[0], None)).expect("ok"), None);
}

#[test]
fn length_finish_flushes_an_incomplete_character() {
    let context = context();
    let mut processor = TokenProcessor::new(&context, &[1], Vec::new(), Instant::now());
    let ids = ids_of(&context.tokenizer, "a😀");
    let steps = run(&mut processor, &ids[..ids.len() - 1], ShardFinish::Length);
    assert_eq!(
        steps.last().and_then(|s| s.finish),
        Some(FinishReason::Length)
    );
    assert!(processor.generated_text().starts_with('a'));
    assert!(
        processor.generated_text().ends_with('\u{FFFD}'),
        "held bytes are flushed, not lost"
    );
}

#[test]
fn error_events_become_generation_errors() {
    let context = context();
    let mut processor = TokenProcessor::new(&context, &[1], Vec::new(), Instant::now());
    let error = processor
        .process(GenerationEvent::Error(GenerationError::Shard(
            "CUDA error".into(),
        )))
        .expect_err("error");
    assert_eq!(error.status().as_u16(), 424);
    assert!(error.to_string().contains("CUDA error"));
}
