//! Launch plans that are refused (conflicting or impossible limits, cheap mistakes caught
//! before the model loads) and the multi-node topology (which node runs what).

use super::tests::{args, env_value, flag_value, plan, programs};
use super::*;

#[test]
fn conflicting_token_limits_name_both_numbers() {
    let error = plan(&["--max-input-tokens", "300", "--max-total-tokens", "200"])
        .expect_err("input >= total");
    assert_eq!(
        error,
        PlanError::InputNotBelowTotal {
            max_input_tokens: 300,
            max_total_tokens: 200
        }
    );
    let message = error.to_string();
    assert!(
        message.contains("300") && message.contains("200"),
        "{message}"
    );

    let error = plan(&[
        "--max-total-tokens",
        "5000",
        "--max-batch-total-tokens",
        "4096",
    ])
    .expect_err("total > batch total");
    assert!(error.to_string().contains("5000") && error.to_string().contains("4096"));

    let error = plan(&[
        "--max-batch-prefill-tokens",
        "9000",
        "--max-batch-total-tokens",
        "4096",
    ])
    .expect_err("prefill > batch total");
    assert!(error.to_string().contains("9000"));
}

#[test]
fn limits_beyond_the_model_are_refused() {
    let error = plan(&["--max-total-tokens", "10000"]).expect_err("beyond 8192 positions");
    assert_eq!(
        error,
        PlanError::AboveModelPositions {
            flag: "--max-total-tokens",
            value: 10000,
            max_position_embeddings: 8192,
        }
    );
}

#[test]
fn shard_count_must_divide_the_heads() {
    let error = plan(&["--num-shard", "2"]).expect_err("9 heads over 2 shards");
    assert_eq!(
        error.to_string(),
        "--num-shard (2) must divide the model's attention heads (9)"
    );
    assert!(
        plan(&["--num-shard", "3"]).is_ok(),
        "9 query and 3 kv heads split 3 ways"
    );
}

#[test]
fn nodes_other_than_0_run_their_ranks_on_tcp_and_no_router() {
    let flags = [
        "--num-shard",
        "3",
        "--nnodes",
        "2",
        "--node-rank",
        "1",
        "--master-addr",
        "10.0.0.1",
        "--shard-grpc-port",
        "29600",
        "--advertise-addr",
        "10.0.0.2",
        "--collective-timeout-s",
        "30",
    ];
    let error = plan(&flags).expect_err("6 ranks do not divide 9 heads");
    assert!(error.to_string().contains("(3 x 2 = 6)"), "{error}");
    let plan = build_plan(
        &args(&flags),
        Path::new("/m"),
        &ModelFacts::default(),
        &programs(),
        42,
    )
    .expect("valid");
    assert_eq!(plan.router, None);
    for (index, shard) in plan.shards.iter().enumerate() {
        let rank = (3 + index).to_string();
        let local_rank = index.to_string();
        let port = (29600 + index).to_string();
        let process = &shard.process;
        assert_eq!(process.name, format!("shard-{rank}"));
        assert_eq!(env_value(process, "RANK"), Some(rank.as_str()));
        assert_eq!(env_value(process, "LOCAL_RANK"), Some(local_rank.as_str()));
        assert_eq!(env_value(process, "WORLD_SIZE"), Some("6"));
        assert_eq!(env_value(process, "MASTER_ADDR"), Some("10.0.0.1"));
        assert_eq!(flag_value(process, "--grpc-tcp-port"), Some(port.as_str()));
        assert_eq!(flag_value(process, "--advertise-addr"), Some("10.0.0.2"));
        assert_eq!(flag_value(process, "--collective-timeout-s"), Some("30"));
    }
    assert_eq!(
        check_args(&args(&["--nnodes", "2", "--node-rank", "2"]), 1),
        Err(PlanError::NodeRankOutOfRange {
            node_rank: 2,
            nnodes: 2
        })
    );
}

#[test]
fn node_0_serves_its_ranks_on_unix_sockets_only_and_runs_the_router() {
    let plan = build_plan(
        &args(&[
            "--num-shard",
            "2",
            "--nnodes",
            "2",
            "--shard-grpc-port",
            "29600",
        ]),
        Path::new("/m"),
        &ModelFacts::default(),
        &programs(),
        42,
    )
    .expect("valid");
    let router = plan.router.as_ref().expect("node 0 runs the router");
    assert_eq!(
        flag_value(router, "--shard-uds-path"),
        Some("/tmp/ferrite-server-42-0")
    );
    for shard in &plan.shards {
        assert_eq!(env_value(&shard.process, "WORLD_SIZE"), Some("4"));
        assert_eq!(flag_value(&shard.process, "--grpc-tcp-port"), None);
    }
}

#[test]
fn cheap_mistakes_are_refused_before_the_model() {
    assert_eq!(
        check_args(&args(&["--num-shard", "0"]), 1),
        Err(PlanError::NoShards(0))
    );
    assert_eq!(
        check_args(&args(&["--port", "29500"]), 1),
        Err(PlanError::PortClash(29500))
    );
    assert_eq!(
        check_args(&args(&["--api-key", ""]), 1),
        Err(PlanError::EmptyApiKey)
    );
    assert_eq!(
        check_args(&args(&["--max-total-tokens", "0"]), 1),
        Err(PlanError::ZeroLimit {
            flag: "--max-total-tokens"
        })
    );
    let long_prefix = format!("/tmp/{}", "s".repeat(120));
    assert!(matches!(
        check_args(&args(&["--shard-uds-path", &long_prefix]), 1),
        Err(PlanError::SocketPathTooLong { .. })
    ));
    assert_eq!(check_args(&args(&[]), 1), Ok(()));
}

#[test]
fn ipv6_and_named_hosts_are_probed_where_bound() {
    assert_eq!(
        plan(&["--hostname", "::"])
            .expect("valid")
            .router_probe_host,
        "::1"
    );
    assert_eq!(
        plan(&["--hostname", "127.0.0.5"])
            .expect("valid")
            .router_probe_host,
        "127.0.0.5"
    );
}

#[test]
fn the_metrics_port_cannot_be_the_api_port() {
    assert_eq!(
        plan(&["--port", "8080", "--prometheus-port", "8080"]),
        Err(PlanError::PrometheusPortClash {
            port: 8080,
            other: "--port"
        })
    );
}
