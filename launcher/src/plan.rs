//! Args -> launch plan, with no side effects: which processes to start, with which flags,
//! environment and sockets. Everything that can be refused before a process starts is refused
//! here, with a message that names the numbers that conflict.

use std::path::{Path, PathBuf};

use crate::args::Args;
use crate::model::ModelFacts;
use crate::shard_plan::ShardPlanner;
use crate::topology::Topology;

/// Longest unix socket path Linux accepts (`sun_path` is 108 bytes including the NUL).
pub const MAX_UDS_PATH_BYTES: usize = 107;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("--num-shard must be at least 1, got {0}")]
    NoShards(u32),
    #[error("--max-input-tokens ({max_input_tokens}) must be less than --max-total-tokens ({max_total_tokens}): the total includes at least one generated token")]
    InputNotBelowTotal {
        max_input_tokens: u32,
        max_total_tokens: u32,
    },
    #[error("--max-total-tokens ({max_total_tokens}) exceeds --max-batch-total-tokens ({max_batch_total_tokens}): one request could never fit in a batch")]
    TotalAboveBatchTotal {
        max_total_tokens: u32,
        max_batch_total_tokens: u32,
    },
    #[error("--max-batch-prefill-tokens ({max_batch_prefill_tokens}) exceeds --max-batch-total-tokens ({max_batch_total_tokens})")]
    PrefillAboveBatchTotal {
        max_batch_prefill_tokens: u32,
        max_batch_total_tokens: u32,
    },
    #[error("{flag} must be at least 1, got 0")]
    ZeroLimit { flag: &'static str },
    #[error(
        "{flag} ({value}) exceeds the model's max_position_embeddings ({max_position_embeddings})"
    )]
    AboveModelPositions {
        flag: &'static str,
        value: u32,
        max_position_embeddings: u32,
    },
    #[error("{shards} must divide the model's {what} ({count})")]
    ShardsDoNotDivide {
        shards: String,
        what: &'static str,
        count: u32,
    },
    #[error("{shards} must divide the model's key/value heads ({count}) or be a multiple of them (each then replicated)")]
    KvHeadsDoNotSplit { shards: String, count: u32 },
    #[error("--nnodes must be at least 1, got 0")]
    NoNodes,
    #[error("--node-rank ({node_rank}) must be less than --nnodes ({nnodes})")]
    NodeRankOutOfRange { node_rank: u32, nnodes: u32 },
    #[error("--port ({0}) and --master-port ({0}) are the same port")]
    PortClash(u16),
    #[error("--prometheus-port ({port}) is also {other}: choose another port")]
    PrometheusPortClash { port: u16, other: &'static str },
    #[error("shard socket path {path} is {length_bytes} bytes, over the {MAX_UDS_PATH_BYTES}-byte unix socket limit: choose a shorter --shard-uds-path")]
    SocketPathTooLong { path: String, length_bytes: usize },
    #[error("--api-key is empty: omit it to run without authentication")]
    EmptyApiKey,
    #[error(transparent)]
    TgiFlag(#[from] crate::tgi_flags::TgiFlagError),
    #[error(transparent)]
    Lora(#[from] crate::lora::LoraFlagError),
}

/// One child process: what to run and under which name its log lines appear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSpec {
    pub process: ProcessSpec,
    pub uds_path: PathBuf,
}

/// Where the launcher finds its sibling programs (discovered by the caller, passed in so the
/// plan stays pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Programs {
    pub server: PathBuf,
    pub router: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPlan {
    pub topology: Topology,
    pub shards: Vec<ShardSpec>,
    /// None on nodes other than 0 (multi-node): node 0's router reaches their shards over TCP.
    pub router: Option<ProcessSpec>,
    /// Address the launcher probes for the router's `/health` (a wildcard bind -> loopback).
    pub router_probe_host: String,
    pub router_port: u16,
    /// Restarts of a crashed shard group; 0 on multi-node deployments (every node's shards
    /// would have to restart together).
    pub max_shard_restarts: u32,
}

/// Checks that need no model: run before preparing it, so mistakes fail in milliseconds.
pub fn check_args(args: &Args, launcher_pid: u32) -> Result<(), PlanError> {
    let topology = Topology::from_args(args);
    topology.check()?;
    crate::tgi_flags::check(args)?;
    if args.api_key.as_deref() == Some("") {
        return Err(PlanError::EmptyApiKey);
    }
    if is_loopback_or_wildcard(&args.master_addr) && args.port == args.master_port {
        return Err(PlanError::PortClash(args.port));
    }
    for (other, port) in [("--port", args.port), ("--master-port", args.master_port)] {
        if args.prometheus_port == port {
            return Err(PlanError::PrometheusPortClash {
                port: args.prometheus_port,
                other,
            });
        }
    }
    for (flag, value) in [
        ("--max-input-tokens", args.max_input_tokens),
        ("--max-total-tokens", args.max_total_tokens),
        ("--max-batch-prefill-tokens", args.max_batch_prefill_tokens),
        ("--max-batch-total-tokens", args.max_batch_total_tokens),
        (
            "--max-concurrent-requests",
            Some(args.max_concurrent_requests),
        ),
    ] {
        if value == Some(0) {
            return Err(PlanError::ZeroLimit { flag });
        }
    }
    check_token_limits(args)?;
    crate::lora::parse_adapters(&args.lora_adapters)?;
    if args.max_lora_rank == 0 {
        return Err(crate::lora::LoraFlagError::ZeroRank.into());
    }
    if args.max_loras_per_batch == 0 {
        return Err(PlanError::ZeroLimit {
            flag: "--max-loras-per-batch",
        });
    }
    let last_rank = topology.ranks().end - 1;
    let last_socket = shard_uds_path(&uds_prefix(args, launcher_pid), last_rank);
    let length_bytes = last_socket.as_os_str().len();
    if length_bytes > MAX_UDS_PATH_BYTES {
        return Err(PlanError::SocketPathTooLong {
            path: last_socket.display().to_string(),
            length_bytes,
        });
    }
    Ok(())
}

fn check_token_limits(args: &Args) -> Result<(), PlanError> {
    if let (Some(max_input_tokens), Some(max_total_tokens)) =
        (args.max_input_tokens, args.max_total_tokens)
    {
        if max_input_tokens >= max_total_tokens {
            return Err(PlanError::InputNotBelowTotal {
                max_input_tokens,
                max_total_tokens,
            });
        }
    }
    if let Some(max_batch_total_tokens) = args.max_batch_total_tokens {
        if let Some(max_total_tokens) = args.max_total_tokens {
            if max_total_tokens > max_batch_total_tokens {
                return Err(PlanError::TotalAboveBatchTotal {
                    max_total_tokens,
                    max_batch_total_tokens,
                });
            }
        }
        if let Some(max_batch_prefill_tokens) = args.max_batch_prefill_tokens {
            if max_batch_prefill_tokens > max_batch_total_tokens {
                return Err(PlanError::PrefillAboveBatchTotal {
                    max_batch_prefill_tokens,
                    max_batch_total_tokens,
                });
            }
        }
    }
    Ok(())
}

/// Checks against the prepared model's config.json.
pub fn check_model(args: &Args, facts: &ModelFacts) -> Result<(), PlanError> {
    if let Some(max_position_embeddings) = facts.max_position_embeddings {
        for (flag, value) in [
            ("--max-total-tokens", args.max_total_tokens),
            ("--max-input-tokens", args.max_input_tokens),
        ] {
            match value {
                Some(value) if value > max_position_embeddings => {
                    return Err(PlanError::AboveModelPositions {
                        flag,
                        value,
                        max_position_embeddings,
                    })
                }
                _ => {}
            }
        }
    }
    Topology::from_args(args).check_model(facts)
}

/// The `ferrite-server prepare-model` call that turns `--model-id` into a local directory.
pub fn prepare_command(args: &Args, programs: &Programs) -> ProcessSpec {
    let mut argv = vec!["prepare-model".to_string()];
    push_opt(&mut argv, "--model-id", args.model_id.as_ref());
    push_opt(&mut argv, "--revision", args.revision.as_ref());
    push_opt(&mut argv, "--gguf-file", args.gguf_file.as_ref());
    push_opt(
        &mut argv,
        "--cache-dir",
        args.model_cache_dir
            .as_ref()
            .map(|dir| dir.display().to_string())
            .as_ref(),
    );
    push_opt(
        &mut argv,
        "--hub-cache-dir",
        args.tgi
            .huggingface_hub_cache
            .as_ref()
            .map(|dir| dir.display().to_string())
            .as_ref(),
    );
    ProcessSpec {
        name: "prepare".into(),
        program: programs.server.clone(),
        args: argv,
        env: python_env(),
    }
}

/// The shards and the router for a prepared model directory.
pub fn build_plan(
    args: &Args,
    model_dir: &Path,
    facts: &ModelFacts,
    programs: &Programs,
    launcher_pid: u32,
) -> Result<LaunchPlan, PlanError> {
    check_args(args, launcher_pid)?;
    check_model(args, facts)?;
    let topology = Topology::from_args(args);
    let shard_planner = ShardPlanner {
        args,
        model_dir,
        program: &programs.server,
        uds_prefix: uds_prefix(args, launcher_pid),
        topology,
    };
    let shards: Vec<ShardSpec> = topology
        .ranks()
        .map(|rank| shard_planner.spec(rank))
        .collect();
    let router = topology
        .runs_router()
        .then(|| router_spec(args, model_dir, programs, &shards));
    Ok(LaunchPlan {
        topology,
        router,
        shards,
        router_probe_host: probe_host(&args.hostname),
        router_port: args.port,
        max_shard_restarts: if topology.nnodes == 1 {
            args.max_shard_restarts
        } else {
            0
        },
    })
}

/// Rank N's socket: `<prefix>-N`.
pub fn shard_uds_path(prefix: &Path, rank: u32) -> PathBuf {
    let mut path = prefix.as_os_str().to_owned();
    path.push(format!("-{rank}"));
    PathBuf::from(path)
}

fn uds_prefix(args: &Args, launcher_pid: u32) -> PathBuf {
    // The default carries the launcher's pid so two launchers on one machine never collide.
    args.shard_uds_path
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/ferrite-server-{launcher_pid}")))
}

fn router_spec(
    args: &Args,
    model_dir: &Path,
    programs: &Programs,
    shards: &[ShardSpec],
) -> ProcessSpec {
    let served_model_id = args.model_id.clone().unwrap_or_else(|| {
        // The default model is named after its directory (e.g. "SmolLM2-135M-Instruct").
        model_dir.file_name().map_or_else(
            || model_dir.display().to_string(),
            |name| name.to_string_lossy().into_owned(),
        )
    });
    let mut argv = vec![
        "--model-id".to_string(),
        served_model_id,
        "--tokenizer-dir".into(),
        model_dir.display().to_string(),
        "--hostname".into(),
        args.hostname.clone(),
        "--port".into(),
        args.port.to_string(),
        "--max-concurrent-requests".into(),
        args.max_concurrent_requests.to_string(),
        "--prefix-caching".into(),
        args.prefix_caching.clone(),
        "--async-scheduling".into(),
        args.async_scheduling.clone(),
    ];
    // One socket per rank, rank 0 first (the router's contract).
    for shard in shards {
        push_opt(
            &mut argv,
            "--shard-uds-path",
            Some(&shard.uds_path.display()),
        );
    }
    push_opt(&mut argv, "--speculate", args.speculate.as_ref());
    if !args.lora_adapters.is_empty() {
        push_opt(
            &mut argv,
            "--max-loras-per-batch",
            Some(&args.max_loras_per_batch),
        );
    }
    push_opt(
        &mut argv,
        "--max-input-tokens",
        args.max_input_tokens.as_ref(),
    );
    push_opt(
        &mut argv,
        "--max-total-tokens",
        args.max_total_tokens.as_ref(),
    );
    push_opt(
        &mut argv,
        "--max-batch-prefill-tokens",
        args.max_batch_prefill_tokens.as_ref(),
    );
    push_opt(
        &mut argv,
        "--max-batch-total-tokens",
        args.max_batch_total_tokens.as_ref(),
    );
    push_opt(&mut argv, "--max-batch-size", args.max_batch_size.as_ref());
    push_opt(
        &mut argv,
        "--request-timeout-s",
        args.request_timeout_s.as_ref(),
    );
    push_opt(
        &mut argv,
        "--stream-keep-alive-s",
        args.stream_keep_alive_s.as_ref(),
    );
    push_opt(&mut argv, "--api-key", args.api_key.as_ref());
    argv.extend(tgi_router_flags(&args.tgi));
    for origin in &args.cors_allow_origin {
        push_opt(&mut argv, "--cors-allow-origin", Some(origin));
    }
    argv.extend(crate::observability::router_flags(args));
    if args.json_output {
        argv.push("--json-output".into());
    }
    ProcessSpec {
        name: "router".into(),
        program: programs.router.clone(),
        args: argv,
        // Startup errors (anyhow) without a captured backtrace: the installed binary is
        // stripped, so RUST_BACKTRACE=1 would fill the death report with `<unknown>` frames.
        // Panics still honour RUST_BACKTRACE.
        env: vec![("RUST_LIB_BACKTRACE".to_string(), "0".to_string())],
    }
}

/// The router's request limits and chat-template source given with TGI's flag names.
fn tgi_router_flags(tgi: &crate::tgi_flags::TgiFlags) -> Vec<String> {
    let mut argv = Vec::new();
    push_opt(&mut argv, "--max-best-of", tgi.max_best_of.as_ref());
    push_opt(
        &mut argv,
        "--max-stop-sequences",
        tgi.max_stop_sequences.as_ref(),
    );
    push_opt(
        &mut argv,
        "--max-top-n-tokens",
        tgi.max_top_n_tokens.as_ref(),
    );
    push_opt(&mut argv, "--payload-limit", tgi.payload_limit.as_ref());
    push_opt(
        &mut argv,
        "--max-client-batch-size",
        tgi.max_client_batch_size.as_ref(),
    );
    push_opt(
        &mut argv,
        "--tokenizer-config-path",
        tgi.tokenizer_config_path
            .as_ref()
            .map(|path| path.display().to_string())
            .as_ref(),
    );
    argv
}

pub(crate) fn push_opt<T: ToString>(argv: &mut Vec<String>, flag: &str, value: Option<&T>) {
    if let Some(value) = value {
        argv.push(flag.to_string());
        argv.push(value.to_string());
    }
}

pub(crate) fn python_env() -> Vec<(String, String)> {
    // Log lines must reach the launcher as they happen, not when a pipe buffer fills.
    vec![("PYTHONUNBUFFERED".to_string(), "1".to_string())]
}

fn is_loopback_or_wildcard(host: &str) -> bool {
    matches!(host, "localhost" | "0.0.0.0" | "::" | "[::]" | "::1") || host.starts_with("127.")
}

fn probe_host(hostname: &str) -> String {
    match hostname {
        "0.0.0.0" => "127.0.0.1".into(),
        "::" | "[::]" => "::1".into(),
        other => other.trim_start_matches('[').trim_end_matches(']').into(),
    }
}

#[cfg(test)]
#[path = "plan_checks_tests.rs"]
mod checks_tests;
#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
