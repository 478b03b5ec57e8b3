use super::*;

fn generation(request_id: u64, token_ids: &[u32]) -> proto::Generation {
    proto::Generation {
        request_id,
        tokens: token_ids
            .iter()
            .map(|&token_id| proto::GeneratedToken {
                token_id,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn step(generations: Vec<proto::Generation>) -> proto::StepResponse {
    proto::StepResponse {
        generations,
        timings: None,
    }
}

fn disagreement_of<T: RankAgreement>(answers: &[T]) -> String {
    match check(answers) {
        Err(ShardError::Disagreement(message)) => message,
        other => panic!("expected a disagreement, got {other:?}"),
    }
}

#[test]
fn equal_steps_agree_whatever_their_timings_and_logprobs() {
    let mut rank1 = step(vec![generation(7, &[11]), generation(8, &[])]);
    rank1.timings = Some(proto::StepTimings {
        forward_ns: 5,
        ..Default::default()
    });
    rank1.generations[0].tokens[0].logprob = f32::NAN;
    let rank0 = step(vec![generation(7, &[11]), generation(8, &[])]);
    assert!(check(&[rank0.clone(), rank1.clone(), rank1]).is_ok());
    assert!(check::<proto::StepResponse>(&[]).is_ok());
}

#[test]
fn a_rank_with_other_tokens_or_requests_disagrees_and_is_named() {
    let rank0 = step(vec![generation(7, &[11])]);
    let message = disagreement_of(&[
        rank0.clone(),
        rank0.clone(),
        step(vec![generation(7, &[12])]),
    ]);
    assert!(message.starts_with("rank 2 differs"), "{message}");
    assert!(
        message.contains("request 7") && message.contains("[11]"),
        "{message}"
    );

    let message = disagreement_of(&[rank0.clone(), step(vec![generation(9, &[11])])]);
    assert!(message.contains("request ids differ"), "{message}");
    let message = disagreement_of(&[rank0.clone(), step(vec![])]);
    assert!(message.contains("1 generations vs 0"), "{message}");

    let mut finished = rank0.clone();
    finished.generations[0].finish_reason = proto::FinishReason::Eos as i32;
    assert!(disagreement_of(&[rank0.clone(), finished]).contains("finish reasons"));
    let mut rejected = rank0.clone();
    rejected.generations[0].error = "unknown request".into();
    assert!(disagreement_of(&[rank0, rejected]).contains("rejected by only some ranks"));
}

#[test]
fn warmups_must_hold_the_same_blocks_but_may_use_different_memory() {
    let rank0 = proto::WarmupResponse {
        num_blocks: 100,
        max_supported_total_tokens: 1600,
        model_memory_bytes: 10,
        ..Default::default()
    };
    let other_memory = proto::WarmupResponse {
        model_memory_bytes: 11,
        kv_cache_memory_bytes: 3,
        ..rank0
    };
    assert!(check(&[rank0, other_memory]).is_ok());
    let fewer = proto::WarmupResponse {
        num_blocks: 99,
        ..rank0
    };
    assert!(disagreement_of(&[rank0, fewer]).contains("KV blocks differ (100 vs 99)"));
}

#[test]
fn infos_agree_across_devices_but_not_across_models() {
    let rank0 = proto::InfoResponse {
        model_id: "m".into(),
        device: "cuda:0".into(),
        world_size: 2,
        ..Default::default()
    };
    let rank1 = proto::InfoResponse {
        device: "cuda:1".into(),
        ..rank0.clone()
    };
    assert!(check(&[rank0.clone(), rank1]).is_ok());
    let other_model = proto::InfoResponse {
        model_id: "n".into(),
        ..rank0.clone()
    };
    assert!(disagreement_of(&[rank0, other_model]).contains("model facts differ"));
}
