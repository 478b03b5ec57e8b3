//! The fake shard's own behaviour: tokens, finishing, and catching bad requests.

use super::*;

fn chunk(
    request_id: u64,
    input_ids: Vec<u32>,
    num_cached_tokens: u32,
    block_table: Vec<u32>,
) -> proto::PrefillChunk {
    proto::PrefillChunk {
        request_id,
        input_ids,
        num_cached_tokens,
        block_table,
        is_last_chunk: true,
        parameters: Some(proto::RequestParameters {
            stopping: Some(proto::StoppingParameters {
                max_new_tokens: 3,
                ignore_eos: false,
            }),
            ..Default::default()
        }),
    }
}

fn prefill(chunks: Vec<proto::PrefillChunk>) -> proto::PrefillRequest {
    proto::PrefillRequest {
        chunks,
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
        .prefill(prefill(vec![chunk(1, vec![9, 10], 0, vec![0])]))
        .await
        .expect("ok");
    assert_eq!(first.generations[0].tokens[0].token_id, 11);
    let decode = proto::DecodeRequest {
        decodes: vec![proto::DecodeEntry {
            request_id: 1,
            block_table: vec![0],
        }],
        release_request_ids: vec![],
    };
    let second = fake.decode(decode).await.expect("ok");
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
async fn shared_blocks_and_gaps_are_violations() {
    let fake = FakeShard::new(FakeShardConfig::default());
    let shared = vec![
        chunk(1, vec![1, 2], 0, vec![5]),
        chunk(2, vec![3, 4], 0, vec![5]),
    ];
    fake.prefill(prefill(shared)).await.expect("ok");
    assert!(fake
        .violations()
        .iter()
        .any(|problem| problem.contains("block 5 used by")));

    let fake = FakeShard::new(FakeShardConfig::default());
    let mut gap = chunk(3, vec![1, 2], 4, vec![0, 1]);
    gap.parameters = None;
    let short_table = chunk(4, vec![1, 2, 3, 4, 5], 0, vec![2]);
    let answer = fake
        .prefill(prefill(vec![gap, short_table]))
        .await
        .expect("ok");
    assert!(answer
        .generations
        .iter()
        .all(|generation| !generation.error.is_empty()));
    assert_eq!(fake.violations().len(), 2);
}
