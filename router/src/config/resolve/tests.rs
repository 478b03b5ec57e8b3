use clap::Parser;

use super::*;

fn args(extra: &[&str]) -> RouterArgs {
    let base = [
        "ferrite-router",
        "--shard-uds-path",
        "/tmp/s0",
        "--tokenizer-dir",
        "/tmp/tok",
    ];
    RouterArgs::try_parse_from(base.iter().chain(extra)).expect("flags parse")
}

fn info(max_position_embeddings: u32, chunked: bool) -> proto::InfoResponse {
    proto::InfoResponse {
        model_id: "/models/smol".into(),
        dtype: "bfloat16".into(),
        device: "cuda:0".into(),
        block_size: 16,
        max_position_embeddings,
        supports_chunked_prefill: chunked,
        supports_prompt_logprobs: true,
        max_top_n_tokens: 10,
        ..Default::default()
    }
}

fn warmup(num_blocks: u32) -> proto::WarmupResponse {
    proto::WarmupResponse {
        num_blocks,
        max_supported_total_tokens: u64::from(num_blocks) * 16,
        ..Default::default()
    }
}

fn resolved(
    extra: &[&str],
    info: &proto::InfoResponse,
    blocks: u32,
) -> Result<RouterConfig, ConfigError> {
    let args = args(extra);
    let plan = plan_warmup(&args, info)?;
    resolve(&args, info, &plan, &warmup(blocks))
}

#[test]
fn defaults_come_from_the_model_and_the_measured_kv_capacity() {
    let info = info(8192, true);
    let args = args(&[]);
    let plan = plan_warmup(&args, &info).expect("plan");
    assert_eq!(plan.max_total_tokens, 8192);
    assert_eq!(plan.max_input_tokens, 8191);
    assert_eq!(plan.max_batch_prefill_tokens, 4096);
    assert_eq!(plan.request().max_total_tokens, 8192);
    assert_eq!(plan.request().num_speculative_tokens, 0);
    let speculating = plan_warmup(&self::args(&["--speculate", "3"]), &info).expect("plan");
    // The shard sizes (and captures graphs for) verify steps of 3 + 1 tokens per request.
    assert_eq!(speculating.request().num_speculative_tokens, 3);

    // Plenty of KV: the model's positions are the limit.
    let config = resolve(&args, &info, &plan, &warmup(10_000)).expect("resolve");
    assert_eq!(config.batching.max_batch_total_tokens, 160_000);
    assert_eq!(config.limits.max_total_tokens, 8192);
    assert_eq!(config.limits.max_top_n_tokens, 5);
    assert_eq!(config.model.device_type, "cuda");
    assert_eq!(config.scheduler_config().num_blocks, 10_000);

    // Little KV (a laptop): defaults shrink to what one request can hold.
    let config = resolve(&args, &info, &plan, &warmup(100)).expect("resolve");
    assert_eq!(config.batching.max_batch_total_tokens, 1600);
    assert_eq!(config.limits.max_total_tokens, 1600);
    assert_eq!(config.limits.max_input_tokens, 1599);
    assert_eq!(config.batching.max_batch_prefill_tokens, 1599);
}

#[test]
fn impossible_combinations_name_the_numbers() {
    let info = info(4096, true);
    let error = resolved(
        &["--max-input-tokens", "2048", "--max-total-tokens", "2048"],
        &info,
        1000,
    )
    .expect_err("input must be below total");
    assert_eq!(
        error.to_string(),
        "`max_input_tokens` (2048) must be < `max_total_tokens` (2048)"
    );
    let error = resolved(&["--max-total-tokens", "5000"], &info, 1000).expect_err("above model");
    assert!(
        error.to_string().contains("(5000)") && error.to_string().contains("(4096)"),
        "{error}"
    );

    let error =
        resolved(&["--max-batch-total-tokens", "20000"], &info, 1000).expect_err("above kv");
    assert_eq!(
        error.to_string(),
        "`max_batch_total_tokens` (20000) exceeds the KV cache capacity the shard measured \
         (16000 tokens = 1000 blocks of 16)"
    );
    let error =
        resolved(&["--max-total-tokens", "4000"], &info, 100).expect_err("one request > kv");
    assert!(matches!(
        error,
        ConfigError::TotalAboveBatchTotal {
            max_total_tokens: 4000,
            max_batch_total_tokens: 1600
        }
    ));
    let error = resolved(&["--max-top-n-tokens", "11"], &info, 100).expect_err("top n");
    assert_eq!(
        error,
        ConfigError::TopNAboveShard {
            given: 11,
            supported: 10
        }
    );
}

#[test]
fn without_chunked_prefill_a_whole_prompt_must_fit_one_step() {
    let info = info(2048, false);
    let plan = plan_warmup(&args(&[]), &info).expect("plan");
    assert_eq!(plan.max_batch_prefill_tokens, 2047);
    let error = plan_warmup(&args(&["--max-batch-prefill-tokens", "512"]), &info)
        .expect_err("prefill below input");
    assert_eq!(
        error,
        ConfigError::PrefillBelowInput {
            max_batch_prefill_tokens: 512,
            max_input_tokens: 2047
        }
    );
}

#[test]
fn zero_limits_are_refused() {
    let info = info(2048, true);
    let error = plan_warmup(&args(&["--max-batch-size", "0"]), &info).expect_err("zero");
    assert_eq!(
        error,
        ConfigError::Zero {
            flag: "max_batch_size"
        }
    );
    let error = resolved(&[], &info, 0).expect_err("no kv");
    assert_eq!(
        error,
        ConfigError::ShardReportedZero {
            field: "num_blocks"
        }
    );
}

#[test]
fn shard_sockets_repeat_and_model_id_overrides() {
    let args = args(&[
        "--shard-uds-path",
        "/tmp/s1",
        "--model-id",
        "smol",
        "--api-key",
        "",
    ]);
    assert_eq!(args.shard_uds_paths.len(), 2);
    let info = info(2048, true);
    let plan = plan_warmup(&args, &info).expect("plan");
    let config = resolve(&args, &info, &plan, &warmup(1000)).expect("resolve");
    assert_eq!(config.model.model_id, "smol");
    assert_eq!(config.model.num_shards, 2);
    assert_eq!(config.server.api_key, None, "an empty key means no key");
}

#[test]
fn async_scheduling_is_on_for_every_shard_unless_told() {
    let gpu = info(8192, true);
    let cpu = proto::InfoResponse {
        device: "cpu".into(),
        ..info(8192, true)
    };
    let on = |extra: &[&str], info: &proto::InfoResponse| {
        resolved(extra, info, 1000)
            .expect("config")
            .batching
            .async_scheduling
    };
    assert!(on(&[], &gpu));
    assert!(
        on(&[], &cpu),
        "CPU shards leave a core to the overlapped work"
    );
    assert!(!on(&["--async-scheduling", "off"], &cpu));
    assert!(!on(&["--async-scheduling", "off"], &gpu));
}
