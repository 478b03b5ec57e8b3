//! The fake shard's own behaviour: tokens, finishing, and catching bad requests.

use super::*;

fn new_request(request_id: u64, token_ids: Vec<u32>, block_ids: Vec<u32>) -> proto::NewRequest {
    proto::NewRequest {
        request_id,
        num_prompt_tokens: token_ids.len() as u32,
        num_scheduled_tokens: token_ids.len() as u32,
        token_ids,
        num_cached_tokens: 0,
        block_ids,
        parameters: Some(proto::RequestParameters {
            stopping: Some(proto::StoppingParameters {
                max_new_tokens: 3,
                ignore_eos: false,
            }),
            ..Default::default()
        }),
    }
}

fn step_of(new_requests: Vec<proto::NewRequest>) -> proto::Step {
    proto::Step {
        new_requests,
        ..Default::default()
    }
}

fn decode_of(request_id: u64, token_id: u32) -> proto::Step {
    proto::Step {
        running_requests: vec![proto::RunningRequest {
            request_id,
            new_token_ids: vec![token_id],
            new_block_ids: vec![],
            num_scheduled_tokens: 1,
            num_lookahead_tokens: 0,
            append_generated_tokens: false,
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn produces_the_expected_tokens_and_stops_at_eos() {
    let config = FakeShardConfig {
        eos_token_ids: vec![12],
        ..FakeShardConfig::default()
    };
    let fake = FakeShard::new(config);
    let first = fake
        .prefill(step_of(vec![new_request(1, vec![9, 10], vec![0])]))
        .await
        .expect("ok");
    assert_eq!(first.generations[0].tokens[0].token_id, 11);
    let second = fake.decode(decode_of(1, 11)).await.expect("ok");
    assert_eq!(second.generations[0].tokens[0].token_id, 12);
    assert_eq!(
        second.generations[0].finish_reason,
        proto::FinishReason::Eos as i32
    );
    assert_eq!(expected_tokens(&[9, 10], 3, 1000, &[12]), vec![11, 12]);
    assert_eq!(fake.num_live_requests(), 0);
    assert!(fake.violations().is_empty());
}

#[tokio::test]
async fn writing_a_shared_block_and_gaps_are_violations() {
    let fake = FakeShard::new(FakeShardConfig::default());
    let shared = vec![
        new_request(1, vec![1, 2], vec![5]),
        new_request(2, vec![3, 4], vec![5]),
    ];
    fake.prefill(step_of(shared)).await.expect("ok");
    assert!(fake
        .violations()
        .iter()
        .any(|problem| problem.contains("which request 1 holds")));

    let fake = FakeShard::new(FakeShardConfig::default());
    let mut no_parameters = new_request(3, vec![1, 2], vec![0]);
    no_parameters.parameters = None;
    let short_table = new_request(4, vec![1, 2, 3, 4, 5], vec![2]);
    let answer = fake
        .prefill(step_of(vec![no_parameters, short_table]))
        .await
        .expect("ok");
    assert!(answer
        .generations
        .iter()
        .all(|generation| !generation.error.is_empty()));
    assert_eq!(fake.violations().len(), 2);
}

#[tokio::test]
async fn a_cached_prefix_must_be_in_the_blocks_given() {
    let fake = FakeShard::new(FakeShardConfig::default());
    // Request 1 computes blocks 0 and 1 (tokens 0..8) and one token of block 2.
    fake.prefill(step_of(vec![new_request(
        1,
        (0..9).collect(),
        vec![0, 1, 2],
    )]))
    .await
    .expect("ok");
    // Request 2 starts from the cached first two blocks: no violation.
    let mut hit = new_request(2, (0..10).collect(), vec![0, 1, 3]);
    hit.num_cached_tokens = 8;
    hit.num_scheduled_tokens = 2;
    let answer = fake.prefill(step_of(vec![hit])).await.expect("ok");
    assert!(answer.generations[0].error.is_empty());
    assert_eq!(answer.generations[0].tokens[0].token_id, 10);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    // Request 3 claims block 1 caches other tokens.
    let mut wrong = new_request(3, (100..110).collect(), vec![0, 1, 4]);
    wrong.num_cached_tokens = 8;
    wrong.num_scheduled_tokens = 2;
    let answer = fake.prefill(step_of(vec![wrong])).await.expect("ok");
    assert!(answer.generations[0].error.contains("cached position 0"));
}

#[tokio::test]
async fn the_fake_follows_the_step_contract() {
    let conformance = crate::testing::step_contract::conformance();
    let config = FakeShardConfig {
        vocab_size: 320, // the real shard's tiny test model, so out-of-vocabulary ids agree
        block_size: conformance.block_size,
        num_blocks: conformance.num_blocks,
        ..FakeShardConfig::default()
    };
    let problems = conformance.run(|| FakeShard::new(config.clone())).await;
    assert_eq!(problems, Vec::<String>::new());
}
