//! One shard process per rank of this node: its flags, the standard torch.distributed
//! variables and OpenMP's wait policy (the configuration passed through the environment: read
//! by torch / its OpenMP runtime, not by ferrite) and its socket.

use std::path::{Path, PathBuf};

use crate::args::Args;
use crate::plan::{push_opt, python_env, shard_uds_path, ProcessSpec, ShardSpec};
use crate::topology::Topology;

pub struct ShardPlanner<'a> {
    pub args: &'a Args,
    pub model_dir: &'a Path,
    pub program: &'a Path,
    pub uds_prefix: PathBuf,
    pub topology: Topology,
}

impl ShardPlanner<'_> {
    /// The shard of global rank `rank` (one of `topology.ranks()`).
    pub fn spec(&self, rank: u32) -> ShardSpec {
        let args = self.args;
        let local_rank = rank - self.topology.ranks().start;
        let uds_path = shard_uds_path(&self.uds_prefix, rank);
        let mut argv = vec![
            "serve".to_string(),
            "--model-id".into(),
            self.model_dir.display().to_string(),
            "--uds-path".into(),
            uds_path.display().to_string(),
            "--dtype".into(),
            args.dtype.as_flag().into(),
            "--attention-backend".into(),
            args.attention_backend.as_flag().into(),
            "--collective-timeout-s".into(),
            args.collective_timeout_s.to_string(),
            "--rendezvous-timeout-s".into(),
            args.rendezvous_timeout_s.to_string(),
            "--kv-cache-dtype".into(),
            args.kv_cache_dtype.as_flag().into(),
            "--model-implementation".into(),
            args.model_implementation.as_flag().into(),
        ];
        push_opt(
            &mut argv,
            "--quantize",
            args.quantize.map(|quantize| quantize.as_flag()).as_ref(),
        );
        let cuda_graphs = args.cuda_graphs.as_ref().map(|sizes| {
            let sizes: Vec<String> = sizes.iter().map(u32::to_string).collect();
            sizes.join(",")
        });
        push_opt(&mut argv, "--cuda-graphs", cuda_graphs.as_ref());
        if args.trust_remote_code {
            argv.push("--trust-remote-code".into());
        }
        if args.tgi.disable_custom_kernels {
            // TGI's "no custom kernels": CPU decode steps also leave the native stack.
            argv.push("--no-cpu-native-decode".into());
        }
        push_opt(
            &mut argv,
            "--kv-cache-memory",
            args.kv_cache_memory.as_ref(),
        );
        // The router reserves the slots; the shard fills them with its proposals.
        let speculative_method =
            (args.speculate.unwrap_or(0) > 0).then_some(&args.speculative_method);
        push_opt(&mut argv, "--speculative-method", speculative_method);
        push_opt(&mut argv, "--rope-scaling", args.tgi.rope_scaling.as_ref());
        push_opt(&mut argv, "--rope-factor", args.tgi.rope_factor.as_ref());
        push_opt(
            &mut argv,
            "--watermark-gamma",
            args.tgi.watermark_gamma.as_ref(),
        );
        push_opt(
            &mut argv,
            "--watermark-delta",
            args.tgi.watermark_delta.as_ref(),
        );
        push_opt(
            &mut argv,
            "--cuda-memory-fraction",
            args.tgi.cuda_memory_fraction.as_ref(),
        );
        argv.extend(lora_flags(args));
        push_opt(
            &mut argv,
            "--cpu-single-thread-max-rows",
            single_thread_max_rows(args).as_ref(),
        );
        if measured_step_threads(args) {
            argv.push("--cpu-measured-step-threads".to_string());
        }
        argv.extend(crate::observability::shard_flags(args));
        if !self.topology.runs_router() {
            // The router on node 0 reaches this node's shards over TCP.
            let port = match args.shard_grpc_port {
                0 => 0,
                first => u32::from(first) + local_rank,
            };
            push_opt(&mut argv, "--grpc-tcp-port", Some(&port));
            push_opt(&mut argv, "--advertise-addr", args.advertise_addr.as_ref());
        }
        let mut env = python_env();
        env.extend(omp_wait_env(&args.omp_wait_policy));
        env.extend([
            ("RANK".to_string(), rank.to_string()),
            (
                "WORLD_SIZE".to_string(),
                self.topology.world_size().to_string(),
            ),
            ("LOCAL_RANK".to_string(), local_rank.to_string()),
            (
                "LOCAL_WORLD_SIZE".to_string(),
                self.topology.shards_per_node.to_string(),
            ),
            ("MASTER_ADDR".to_string(), args.master_addr.clone()),
            ("MASTER_PORT".to_string(), args.master_port.to_string()),
        ]);
        ShardSpec {
            process: ProcessSpec {
                name: format!("shard-{rank}"),
                program: self.program.to_path_buf(),
                args: argv,
                env,
            },
            uds_path,
        }
    }
}

/// The adapters the shard loads (checked by `plan::check_args` already), their rank bound and
/// where hub downloads go; nothing without adapters.
fn lora_flags(args: &Args) -> Vec<String> {
    let adapters = crate::lora::parse_adapters(&args.lora_adapters).unwrap_or_default();
    let Some(value) = crate::lora::shard_flag_value(&adapters) else {
        return Vec::new();
    };
    let mut argv = vec!["--lora-adapters".to_string(), value];
    push_opt(&mut argv, "--max-lora-rank", Some(&args.max_lora_rank));
    let hub_cache = args.tgi.huggingface_hub_cache.as_ref();
    let hub_cache = hub_cache.map(|dir| dir.display().to_string());
    push_opt(&mut argv, "--hub-cache-dir", hub_cache.as_ref());
    argv
}

/// `--cpu-single-thread-max-rows`, else by the wait policy: CPU steps of at most 8 rows run on
/// one torch thread when idle threads sleep (passive), because waking them at each of a small
/// step's parallel regions costs more than they save (bench/RESULTS.md: batch 1 to 12 faster
/// on one thread of two, 16 on par); with `adaptive` those steps choose one thread or all by
/// measurement (`measured_step_threads`); spinning threads wake at once, so every step keeps them.
fn single_thread_max_rows(args: &Args) -> Option<u32> {
    const SMALL_STEP_MAX_ROWS: u32 = 8;
    args.cpu_single_thread_max_rows.or_else(|| {
        let policy = args.omp_wait_policy.to_ascii_lowercase();
        matches!(policy.as_str(), "passive" | "adaptive").then_some(SMALL_STEP_MAX_ROWS)
    })
}

/// `--omp-wait-policy adaptive`: the shard times its small steps on one thread and on all, and
/// runs them on the faster (a busy neighbour process turns two spinning threads ~5x slower,
/// free cores make them ~15% faster than one: bench/RESULTS.md).
fn measured_step_threads(args: &Args) -> bool {
    args.omp_wait_policy.eq_ignore_ascii_case("adaptive")
}

/// OpenMP's wait policy for `--omp-wait-policy`, read by the OpenMP runtime when torch loads
/// (measured with bench/contention.py and bench/router_overhead.py on 2 cores): idle threads
/// that sleep at once (passive) keep a shard's speed when another busy process shares its
/// cores but make two threads slower than one for a small step; a short spin (GNU OpenMP's
/// GOMP_SPINCOUNT; `spin`, and `adaptive`, which also picks the thread count by measurement)
/// makes them faster on idle cores, and always using both collapses under contention.
fn omp_wait_env(policy: &str) -> Vec<(String, String)> {
    const SPIN_ITERATIONS: &str = "10000";
    match policy.to_ascii_lowercase().as_str() {
        "runtime" => Vec::new(),
        "spin" | "adaptive" => vec![("GOMP_SPINCOUNT".to_string(), SPIN_ITERATIONS.to_string())],
        other => vec![("OMP_WAIT_POLICY".to_string(), other.to_ascii_uppercase())],
    }
}
