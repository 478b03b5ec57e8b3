use std::path::Path;

use clap::{CommandFactory, Parser};

use super::*;
use crate::model::ModelFacts;
use crate::plan::{build_plan, prepare_command, LaunchPlan, PlanError, ProcessSpec, Programs};

/// A TGI deployment's command line, with every flag ferrite accepts under TGI's name.
const TGI_COMMAND_LINE: &[&str] = &[
    "--model-id",
    "org/model",
    "--max-batch-size",
    "8",
    "--max-best-of",
    "3",
    "--max-stop-sequences",
    "2",
    "--max-top-n-tokens",
    "4",
    "--max-input-length",
    "300",
    "--max-total-tokens",
    "512",
    "--max-waiting-tokens",
    "20",
    "--waiting-served-ratio",
    "1.2",
    "--cuda-memory-fraction",
    "0.8",
    "--payload-limit",
    "100000",
    "--trust-remote-code",
    "--sharded",
    "false",
    "--rope-scaling",
    "dynamic",
    "--rope-factor",
    "2.0",
    "--huggingface-hub-cache",
    "/data/hub",
    "--disable-custom-kernels",
    "--max-client-batch-size",
    "2",
    "--graceful-termination-timeout",
    "30",
    "--watermark-gamma",
    "0.25",
    "--watermark-delta",
    "3",
    "--tokenizer-config-path",
    "/cfg/tokenizer_config.json",
    "--usage-stats",
    "off",
];

fn args(flags: &[&str]) -> Args {
    let argv = std::iter::once("ferrite-launcher").chain(flags.iter().copied());
    Args::try_parse_from(argv).expect("test flags parse")
}

fn plan(args: &Args) -> Result<LaunchPlan, PlanError> {
    let facts = ModelFacts {
        max_position_embeddings: Some(8192),
        num_attention_heads: Some(9),
        num_key_value_heads: Some(3),
        intermediate_size: Some(1536),
    };
    build_plan(args, Path::new("/cache/model"), &facts, &programs(), 7)
}

fn programs() -> Programs {
    Programs {
        server: "/venv/bin/ferrite-server".into(),
        router: "/venv/bin/ferrite-router".into(),
    }
}

fn flag_value<'a>(spec: &'a ProcessSpec, flag: &str) -> Option<&'a str> {
    let position = spec.args.iter().position(|arg| arg == flag)?;
    spec.args.get(position + 1).map(String::as_str)
}

#[test]
fn a_tgi_command_line_parses_and_plans() {
    let parsed = args(TGI_COMMAND_LINE);
    assert_eq!(parsed.max_batch_size, Some(8));
    assert_eq!(parsed.tgi.sharded, Some(false));
    assert!(parsed.trust_remote_code && parsed.tgi.disable_custom_kernels);
    let folded = fold_aliases(parsed);
    assert_eq!(folded.max_input_tokens, Some(300));
    assert_eq!(folded.graceful_shutdown_timeout_s, 30);
    assert_eq!(folded.attention_backend, AttentionBackend::Torch);

    let plan = plan(&folded).expect("a TGI command line is a valid plan");
    let router = plan.router.expect("node 0 runs the router");
    for (flag, value) in [
        ("--max-batch-size", "8"),
        ("--max-best-of", "3"),
        ("--max-stop-sequences", "2"),
        ("--max-top-n-tokens", "4"),
        ("--max-input-tokens", "300"),
        ("--payload-limit", "100000"),
        ("--max-client-batch-size", "2"),
        ("--tokenizer-config-path", "/cfg/tokenizer_config.json"),
    ] {
        assert_eq!(flag_value(&router, flag), Some(value), "router {flag}");
    }
    let shard = &plan.shards[0].process;
    for (flag, value) in [
        ("--watermark-gamma", "0.25"),
        ("--watermark-delta", "3"),
        ("--cuda-memory-fraction", "0.8"),
        ("--attention-backend", "torch"),
        ("--rope-scaling", "dynamic"),
        ("--rope-factor", "2"),
    ] {
        assert_eq!(flag_value(shard, flag), Some(value), "shard {flag}");
    }
    let prepare = prepare_command(&folded, &programs());
    assert_eq!(flag_value(&prepare, "--hub-cache-dir"), Some("/data/hub"));
}

#[test]
fn unset_tgi_flags_leave_the_children_on_their_defaults() {
    let plain = fold_aliases(args(&[]));
    let plan = plan(&plain).expect("valid");
    let router = plan.router.expect("router");
    for flag in [
        "--max-batch-size",
        "--max-best-of",
        "--payload-limit",
        "--tokenizer-config-path",
    ] {
        assert_eq!(flag_value(&router, flag), None, "{flag}");
    }
    assert_eq!(
        flag_value(&plan.shards[0].process, "--watermark-gamma"),
        None
    );
    assert_eq!(plain.attention_backend, AttentionBackend::Auto);
    assert_eq!(plain.graceful_shutdown_timeout_s, 10);
    assert!(notices(&args(&[])).is_empty());
}

#[test]
fn ferrite_names_win_over_tgi_aliases() {
    let both = args(&[
        "--max-input-tokens",
        "100",
        "--max-input-length",
        "300",
        "--disable-custom-kernels",
        "--attention-backend",
        "triton",
    ]);
    let lines = notices(&both);
    assert!(
        lines
            .iter()
            .any(|line| line.contains("--max-input-length is ignored")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line.contains("overridden by --attention-backend")),
        "{lines:?}"
    );
    let folded = fold_aliases(both);
    assert_eq!(folded.max_input_tokens, Some(100));
    assert_eq!(folded.attention_backend, AttentionBackend::Triton);
}

#[test]
fn flags_that_cannot_apply_each_get_one_warning_line() {
    let lines = notices(&args(TGI_COMMAND_LINE));
    for flag in [
        "--max-waiting-tokens",
        "--waiting-served-ratio",
        "--usage-stats",
    ] {
        assert_eq!(
            lines.iter().filter(|line| line.starts_with(flag)).count(),
            1,
            "{flag}: {lines:?}"
        );
    }
    assert!(lines.iter().all(|line| !line.contains('\n')));
    let sharded = notices(&args(&["--sharded", "true"]));
    assert!(
        sharded.iter().any(|line| line.contains("--num-shard")),
        "{sharded:?}"
    );
    assert!(notices(&args(&["--sharded", "true", "--num-shard", "2"])).is_empty());
}

#[test]
fn contradictions_and_out_of_range_values_are_refused_naming_the_flag() {
    let refused = |flags: &[&str]| {
        check(&fold_aliases(args(flags)))
            .expect_err("refused")
            .to_string()
    };
    assert_eq!(
        refused(&["--sharded", "false", "--num-shard", "2"]),
        "--sharded false contradicts --num-shard 2: drop one of them"
    );
    assert_eq!(
        refused(&["--watermark-gamma", "1.5"]),
        "--watermark-gamma must be in (0, 1), got 1.5"
    );
    assert_eq!(
        refused(&["--watermark-delta=-1"]),
        "--watermark-delta must be a finite number >= 0, got -1"
    );
    assert_eq!(
        refused(&["--cuda-memory-fraction", "0"]),
        "--cuda-memory-fraction must be in (0, 1], got 0"
    );
    assert_eq!(
        refused(&["--max-batch-size", "0"]),
        "--max-batch-size must be at least 1, got 0"
    );
    assert!(check(&args(&[
        "--cuda-memory-fraction",
        "1.0",
        "--watermark-gamma",
        "0.5"
    ]))
    .is_ok());
    // The plan runs the same checks.
    assert!(matches!(
        plan(&args(&["--watermark-gamma", "0"])),
        Err(PlanError::TgiFlag(_))
    ));
}

#[test]
fn every_tgi_environment_variable_is_read() {
    // TGI's documented variable names (text-generation-launcher --help).
    let names: Vec<String> = Args::command()
        .get_arguments()
        .filter_map(|arg| arg.get_env().map(|env| env.to_string_lossy().into_owned()))
        .collect();
    for name in [
        "MAX_BATCH_SIZE",
        "MAX_BEST_OF",
        "MAX_STOP_SEQUENCES",
        "MAX_TOP_N_TOKENS",
        "MAX_INPUT_LENGTH",
        "MAX_WAITING_TOKENS",
        "WAITING_SERVED_RATIO",
        "CUDA_MEMORY_FRACTION",
        "PAYLOAD_LIMIT",
        "TRUST_REMOTE_CODE",
        "SHARDED",
        "ROPE_SCALING",
        "ROPE_FACTOR",
        "HUGGINGFACE_HUB_CACHE",
        "DISABLE_CUSTOM_KERNELS",
        "MAX_CLIENT_BATCH_SIZE",
        "GRACEFUL_TERMINATION_TIMEOUT",
        "WATERMARK_GAMMA",
        "WATERMARK_DELTA",
        "TOKENIZER_CONFIG_PATH",
        "USAGE_STATS",
        "MAX_INPUT_TOKENS",
        "MAX_TOTAL_TOKENS",
        "MAX_BATCH_PREFILL_TOKENS",
        "MAX_BATCH_TOTAL_TOKENS",
        "MAX_CONCURRENT_REQUESTS",
    ] {
        assert!(names.iter().any(|env| env == name), "no flag reads {name}");
    }
}
