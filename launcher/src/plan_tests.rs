use std::path::{Path, PathBuf};

use clap::Parser;

use super::*;

pub(super) fn args(flags: &[&str]) -> Args {
    let argv = std::iter::once("ferrite-launcher").chain(flags.iter().copied());
    Args::try_parse_from(argv).expect("test flags parse")
}

pub(super) fn programs() -> Programs {
    Programs {
        server: "/venv/bin/ferrite-server".into(),
        router: "/venv/bin/ferrite-router".into(),
    }
}

pub(super) fn smollm_facts() -> ModelFacts {
    ModelFacts {
        max_position_embeddings: Some(8192),
        num_attention_heads: Some(9),
        num_key_value_heads: Some(3),
        intermediate_size: Some(1536),
    }
}

pub(super) fn plan(flags: &[&str]) -> Result<LaunchPlan, PlanError> {
    build_plan(
        &args(flags),
        Path::new("/cache/SmolLM2-135M-Instruct"),
        &smollm_facts(),
        &programs(),
        42,
    )
}

pub(super) fn env_value<'a>(spec: &'a ProcessSpec, key: &str) -> Option<&'a str> {
    spec.env
        .iter()
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.as_str())
}

pub(super) fn flag_value<'a>(spec: &'a ProcessSpec, flag: &str) -> Option<&'a str> {
    let position = spec.args.iter().position(|arg| arg == flag)?;
    spec.args.get(position + 1).map(String::as_str)
}

#[test]
fn omp_wait_policy_reaches_the_shards_unless_left_to_the_runtime() {
    let active = plan(&["--omp-wait-policy", "Active"]).expect("valid");
    assert_eq!(
        env_value(&active.shards[0].process, "OMP_WAIT_POLICY"),
        Some("ACTIVE")
    );
    let runtime = plan(&["--omp-wait-policy", "runtime"]).expect("valid");
    assert_eq!(
        env_value(&runtime.shards[0].process, "OMP_WAIT_POLICY"),
        None
    );
}

#[test]
fn small_cpu_steps_run_on_one_thread_only_with_sleeping_threads() {
    let passive = plan(&["--omp-wait-policy", "passive"]).expect("valid");
    assert_eq!(
        flag_value(&passive.shards[0].process, "--cpu-single-thread-max-rows"),
        Some("8")
    );
    assert!(!has_flag(
        &passive.shards[0].process,
        "--cpu-measured-step-threads"
    ));
    for policy in ["spin", "active", "runtime"] {
        let other = plan(&["--omp-wait-policy", policy]).expect("valid");
        assert_eq!(
            flag_value(&other.shards[0].process, "--cpu-single-thread-max-rows"),
            None,
            "{policy}"
        );
        assert!(!has_flag(
            &other.shards[0].process,
            "--cpu-measured-step-threads"
        ));
    }
    let chosen = plan(&["--cpu-single-thread-max-rows", "0"]).expect("valid");
    assert_eq!(
        flag_value(&chosen.shards[0].process, "--cpu-single-thread-max-rows"),
        Some("0")
    );
}

#[test]
fn by_default_small_cpu_steps_measure_their_thread_count_with_spinning_threads() {
    let default = plan(&[]).expect("valid");
    let shard = &default.shards[0].process;
    assert_eq!(env_value(shard, "GOMP_SPINCOUNT"), Some("10000"));
    assert_eq!(env_value(shard, "OMP_WAIT_POLICY"), None);
    assert_eq!(flag_value(shard, "--cpu-single-thread-max-rows"), Some("8"));
    assert!(has_flag(shard, "--cpu-measured-step-threads"));
}

#[test]
fn disable_custom_kernels_turns_the_native_cpu_decode_off() {
    let default = plan(&[]).expect("valid");
    assert!(!has_flag(
        &default.shards[0].process,
        "--no-cpu-native-decode"
    ));
    let disabled = plan(&["--disable-custom-kernels"]).expect("valid");
    assert!(has_flag(
        &disabled.shards[0].process,
        "--no-cpu-native-decode"
    ));
}

fn has_flag(spec: &ProcessSpec, flag: &str) -> bool {
    spec.args.iter().any(|arg| arg == flag)
}

#[test]
fn shards_get_rank_world_size_and_rendezvous_env() {
    let plan = plan(&["--num-shard", "3", "--master-port", "29600"]).expect("valid");
    assert_eq!(plan.shards.len(), 3);
    for (rank, shard) in plan.shards.iter().enumerate() {
        let rank = rank.to_string();
        assert_eq!(shard.process.name, format!("shard-{rank}"));
        assert_eq!(env_value(&shard.process, "RANK"), Some(rank.as_str()));
        assert_eq!(env_value(&shard.process, "LOCAL_RANK"), Some(rank.as_str()));
        assert_eq!(env_value(&shard.process, "WORLD_SIZE"), Some("3"));
        assert_eq!(env_value(&shard.process, "LOCAL_WORLD_SIZE"), Some("3"));
        assert_eq!(env_value(&shard.process, "MASTER_ADDR"), Some("127.0.0.1"));
        assert_eq!(env_value(&shard.process, "MASTER_PORT"), Some("29600"));
        assert_eq!(env_value(&shard.process, "GOMP_SPINCOUNT"), Some("10000"));
        assert_eq!(
            shard.uds_path,
            PathBuf::from(format!("/tmp/ferrite-server-42-{rank}"))
        );
        assert_eq!(shard.process.args[0], "serve");
        assert_eq!(
            flag_value(&shard.process, "--uds-path"),
            shard.uds_path.to_str()
        );
        assert_eq!(
            flag_value(&shard.process, "--model-id"),
            Some("/cache/SmolLM2-135M-Instruct")
        );
    }
}

#[test]
fn shard_flags_carry_dtype_backend_and_kv_memory() {
    let plan = plan(&[
        "--dtype",
        "float32",
        "--attention-backend",
        "torch",
        "--kv-cache-memory",
        "1MiB",
        "--shard-uds-path",
        "/run/f",
    ])
    .expect("valid");
    let shard = &plan.shards[0].process;
    assert_eq!(flag_value(shard, "--dtype"), Some("float32"));
    assert_eq!(flag_value(shard, "--attention-backend"), Some("torch"));
    assert_eq!(flag_value(shard, "--kv-cache-memory"), Some("1048576"));
    assert_eq!(plan.shards[0].uds_path, PathBuf::from("/run/f-0"));
    assert_eq!(shard.program, PathBuf::from("/venv/bin/ferrite-server"));
    assert_eq!(flag_value(shard, "--cuda-graphs"), None); // the shard's default buckets
}

#[test]
fn cuda_graph_sizes_reach_the_shard() {
    let graphs = plan(&["--cuda-graphs", "1,2,8"]).expect("valid");
    assert_eq!(
        flag_value(&graphs.shards[0].process, "--cuda-graphs"),
        Some("1,2,8")
    );
    let off = plan(&["--cuda-graphs", "0"]).expect("valid");
    assert_eq!(
        flag_value(&off.shards[0].process, "--cuda-graphs"),
        Some("0")
    );
}

#[test]
fn shard_flags_carry_quantization() {
    let quantized =
        plan(&["--quantize", "bitsandbytes-nf4", "--kv-cache-dtype", "fp8"]).expect("valid");
    let shard = &quantized.shards[0].process;
    assert_eq!(flag_value(shard, "--quantize"), Some("bitsandbytes-nf4"));
    assert_eq!(flag_value(shard, "--kv-cache-dtype"), Some("fp8"));
    let plain = plan(&[]).expect("valid");
    let shard = &plain.shards[0].process;
    assert_eq!(flag_value(shard, "--quantize"), None);
    assert_eq!(flag_value(shard, "--kv-cache-dtype"), Some("auto"));
}

#[test]
fn trust_remote_code_reaches_the_shards_only_when_given() {
    let has_flag = |plan: &LaunchPlan| {
        plan.shards[0]
            .process
            .args
            .iter()
            .any(|arg| arg == "--trust-remote-code")
    };
    assert!(has_flag(&plan(&["--trust-remote-code"]).expect("valid")));
    assert!(!has_flag(&plan(&[]).expect("valid")));
}

#[test]
fn model_implementation_reaches_the_shards() {
    let forced = plan(&["--model-implementation", "transformers"]).expect("valid");
    let value = flag_value(&forced.shards[0].process, "--model-implementation");
    assert_eq!(value, Some("transformers"));
    let default = plan(&[]).expect("valid");
    let value = flag_value(&default.shards[0].process, "--model-implementation");
    assert_eq!(value, Some("auto"));
}

#[test]
fn router_gets_tokenizer_sockets_and_limits() {
    let plan = plan(&[
        "--port",
        "8080",
        "--max-input-tokens",
        "100",
        "--max-total-tokens",
        "200",
        "--api-key",
        "secret",
        "--cors-allow-origin",
        "http://a,http://b",
        "--json-output",
    ])
    .expect("valid");
    let router = plan.router.as_ref().expect("node 0 runs the router");
    assert_eq!(router.program, PathBuf::from("/venv/bin/ferrite-router"));
    assert_eq!(
        flag_value(router, "--tokenizer-dir"),
        Some("/cache/SmolLM2-135M-Instruct")
    );
    assert_eq!(
        flag_value(router, "--model-id"),
        Some("SmolLM2-135M-Instruct")
    );
    assert_eq!(
        flag_value(router, "--shard-uds-path"),
        Some("/tmp/ferrite-server-42-0")
    );
    assert_eq!(flag_value(router, "--port"), Some("8080"));
    assert_eq!(flag_value(router, "--max-input-tokens"), Some("100"));
    assert_eq!(flag_value(router, "--max-total-tokens"), Some("200"));
    assert_eq!(
        flag_value(router, "--max-batch-total-tokens"),
        None,
        "left to the router"
    );
    assert_eq!(flag_value(router, "--api-key"), Some("secret"));
    assert_eq!(
        router
            .args
            .iter()
            .filter(|arg| *arg == "--cors-allow-origin")
            .count(),
        2
    );
    assert!(router.args.iter().any(|arg| arg == "--json-output"));
    assert_eq!(
        flag_value(router, "--prefix-caching"),
        Some("on"),
        "on by default"
    );
    assert_eq!(
        flag_value(router, "--request-timeout-s"),
        None,
        "no limit by default"
    );
    let off = self::plan(&["--prefix-caching", "off", "--request-timeout-s", "30"]).expect("valid");
    let off_router = off.router.as_ref().expect("router");
    assert_eq!(flag_value(off_router, "--prefix-caching"), Some("off"));
    assert_eq!(flag_value(off_router, "--request-timeout-s"), Some("30"));
    assert_eq!(
        plan.router_probe_host, "127.0.0.1",
        "wildcard bind is probed on loopback"
    );
}

#[test]
fn router_lists_every_rank_socket_in_rank_order() {
    let plan = plan(&["--num-shard", "3", "--shard-uds-path", "/run/s"]).expect("valid");
    let sockets: Vec<&str> = plan
        .router
        .as_ref()
        .expect("router")
        .args
        .windows(2)
        .filter(|pair| pair[0] == "--shard-uds-path")
        .map(|pair| pair[1].as_str())
        .collect();
    assert_eq!(sockets, vec!["/run/s-0", "/run/s-1", "/run/s-2"]);
}

#[test]
fn a_hub_model_keeps_its_id_for_the_api() {
    let plan = plan(&["--model-id", "HuggingFaceTB/SmolLM2-135M-Instruct"]).expect("valid");
    assert_eq!(
        flag_value(plan.router.as_ref().expect("router"), "--model-id"),
        Some("HuggingFaceTB/SmolLM2-135M-Instruct")
    );
}

#[test]
fn prepare_passes_only_given_flags() {
    let bare = prepare_command(&args(&[]), &programs());
    assert_eq!(bare.args, vec!["prepare-model"]);
    let full = prepare_command(
        &args(&[
            "--model-id",
            "org/m",
            "--revision",
            "v2",
            "--gguf-file",
            "m.Q8_0.gguf",
            "--model-cache-dir",
            "/c",
        ]),
        &programs(),
    );
    assert_eq!(
        full.args,
        vec![
            "prepare-model",
            "--model-id",
            "org/m",
            "--revision",
            "v2",
            "--gguf-file",
            "m.Q8_0.gguf",
            "--cache-dir",
            "/c"
        ]
    );
}

#[test]
fn telemetry_flags_reach_router_and_shards() {
    let plan = plan(&[
        "--otlp-endpoint",
        "http://127.0.0.1:4317",
        "--otlp-service-name",
        "prod",
        "--prometheus-port",
        "9100",
        "--log-level",
        "warn",
        "--json-output",
    ])
    .expect("valid");
    let router = plan.router.as_ref().expect("node 0 runs the router");
    assert_eq!(
        flag_value(router, "--otlp-endpoint"),
        Some("http://127.0.0.1:4317")
    );
    assert_eq!(
        flag_value(router, "--otlp-service-name"),
        Some("prod.router")
    );
    assert_eq!(flag_value(router, "--prometheus-port"), Some("9100"));
    assert_eq!(flag_value(router, "--log-level"), Some("warn"));
    let shard = &plan.shards[0].process;
    assert_eq!(
        flag_value(shard, "--otlp-endpoint"),
        Some("http://127.0.0.1:4317")
    );
    assert_eq!(flag_value(shard, "--otlp-service-name"), Some("prod.shard"));
    assert_eq!(flag_value(shard, "--log-level"), Some("WARNING"));
    assert!(shard.args.iter().any(|arg| arg == "--json-output"));
}

#[test]
fn without_an_endpoint_no_child_is_asked_to_trace() {
    let plan = plan(&[]).expect("valid");
    let router = plan.router.as_ref().expect("node 0 runs the router");
    assert_eq!(flag_value(router, "--prometheus-port"), Some("9000"));
    assert_eq!(flag_value(router, "--log-level"), Some("info"));
    for spec in std::iter::once(router).chain(plan.shards.iter().map(|s| &s.process)) {
        assert!(!spec.args.iter().any(|arg| arg.starts_with("--otlp")));
    }
}

#[test]
fn speculate_reserves_slots_in_the_router_and_proposes_in_the_shards() {
    let plan = self::plan(&["--speculate", "3"]).expect("valid");
    let router = plan.router.as_ref().expect("router");
    assert_eq!(flag_value(router, "--speculate"), Some("3"));
    assert_eq!(
        flag_value(&plan.shards[0].process, "--speculative-method"),
        Some("ngram")
    );
    let off = self::plan(&[]).expect("valid");
    assert_eq!(
        flag_value(off.router.as_ref().expect("router"), "--speculate"),
        None
    );
    assert_eq!(
        flag_value(&off.shards[0].process, "--speculative-method"),
        None
    );
    let unknown = [
        "ferrite-launcher",
        "--speculate",
        "3",
        "--speculative-method",
        "medusa",
    ];
    assert!(
        Args::try_parse_from(unknown).is_err(),
        "only ngram is built"
    );
}

#[test]
fn lora_adapters_reach_the_shards_and_their_batch_cap_the_router() {
    let plan = self::plan(&[
        "--lora-adapters",
        "org/support,math=org/math-lora",
        "--max-lora-rank",
        "16",
        "--max-loras-per-batch",
        "2",
        "--huggingface-hub-cache",
        "/hub",
    ])
    .expect("valid");
    let shard = &plan.shards[0].process;
    assert_eq!(
        flag_value(shard, "--lora-adapters"),
        Some("org/support=org/support,math=org/math-lora")
    );
    assert_eq!(flag_value(shard, "--max-lora-rank"), Some("16"));
    assert_eq!(flag_value(shard, "--hub-cache-dir"), Some("/hub"));
    let router = plan.router.as_ref().expect("router");
    assert_eq!(flag_value(router, "--max-loras-per-batch"), Some("2"));
    let none = self::plan(&[]).expect("valid");
    assert_eq!(flag_value(&none.shards[0].process, "--lora-adapters"), None);
    assert_eq!(flag_value(&none.shards[0].process, "--max-lora-rank"), None);
    let missing = check_args(&args(&["--lora-adapters", "a=/nonexistent/lora"]), 42);
    assert!(matches!(missing, Err(PlanError::Lora(_))));
    let zero = check_args(&args(&["--max-lora-rank", "0"]), 42);
    assert!(matches!(zero, Err(PlanError::Lora(_))));
}
