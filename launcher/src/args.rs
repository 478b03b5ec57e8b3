//! The launcher's command line: the one place its configuration is read. Every flag can also be
//! given through the upper-case environment variable of the same name (`--max-input-tokens` <->
//! `MAX_INPUT_TOKENS`), as TGI users expect, so container images can be configured with `-e`.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Compute dtype of the shards' weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Dtype {
    Auto,
    Float32,
    Bfloat16,
    Float16,
}

/// Lowest level the launcher and its children log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Attention implementation the shards use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttentionBackend {
    Auto,
    Torch,
    Triton,
}

/// Weight quantization of the shards (TGI's `--quantize` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Quantize {
    /// LLM.int8 through bitsandbytes, at load time
    Bitsandbytes,
    /// 4-bit NormalFloat through bitsandbytes, at load time
    BitsandbytesNf4,
    /// 4-bit float through bitsandbytes, at load time
    BitsandbytesFp4,
    /// float8 e4m3 weights: quantized at load time, or an FP8 checkpoint
    Fp8,
    /// a GPTQ checkpoint (detected without the flag)
    Gptq,
    /// an AWQ checkpoint (detected without the flag)
    Awq,
    /// int8 weights (per output channel), at load time; CPU: PyTorch's weight-only kernel
    Int8,
    /// int4 weights (groups of 32 inputs), at load time; CPU: PyTorch's weight-only kernel
    Int4,
}

impl Quantize {
    pub fn as_flag(self) -> &'static str {
        match self {
            Quantize::Bitsandbytes => "bitsandbytes",
            Quantize::BitsandbytesNf4 => "bitsandbytes-nf4",
            Quantize::BitsandbytesFp4 => "bitsandbytes-fp4",
            Quantize::Fp8 => "fp8",
            Quantize::Gptq => "gptq",
            Quantize::Awq => "awq",
            Quantize::Int8 => "int8",
            Quantize::Int4 => "int4",
        }
    }
}

/// How the shards store the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KvCacheDtype {
    /// the compute dtype
    Auto,
    /// float8 e4m3 with a per-tensor scale (half the memory of 16-bit)
    Fp8,
}

impl KvCacheDtype {
    pub fn as_flag(self) -> &'static str {
        match self {
            KvCacheDtype::Auto => "auto",
            KvCacheDtype::Fp8 => "fp8",
        }
    }
}

/// Which code runs the model in the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelImplementation {
    /// ferrite's own model file when the architecture has one, else the transformers fallback
    Auto,
    /// ferrite's own model file only (refuse other architectures)
    Native,
    /// the transformers model with ferrite's paged attention, for any causal LM
    Transformers,
}

impl ModelImplementation {
    pub fn as_flag(self) -> &'static str {
        match self {
            ModelImplementation::Auto => "auto",
            ModelImplementation::Native => "native",
            ModelImplementation::Transformers => "transformers",
        }
    }
}

impl Dtype {
    pub fn as_flag(self) -> &'static str {
        match self {
            Dtype::Auto => "auto",
            Dtype::Float32 => "float32",
            Dtype::Bfloat16 => "bfloat16",
            Dtype::Float16 => "float16",
        }
    }
}

impl AttentionBackend {
    pub fn as_flag(self) -> &'static str {
        match self {
            AttentionBackend::Auto => "auto",
            AttentionBackend::Torch => "torch",
            AttentionBackend::Triton => "triton",
        }
    }
}

/// `--version`: the package version, marked when this is an unoptimized (debug) build, whose
/// router spends ~5x the CPU time per token of a release build (bench/RESULTS.md): benchmarks
/// print it, and `pip install .` makes release builds.
const VERSION: &str = if cfg!(debug_assertions) {
    concat!(env!("CARGO_PKG_VERSION"), " (debug build)")
} else {
    env!("CARGO_PKG_VERSION")
};

/// Start ferrite: prepare the model, spawn the model shards and the router, supervise them.
#[derive(Debug, Clone, Parser)]
#[command(name = "ferrite-launcher", version = VERSION, max_term_width = 120)]
pub struct Args {
    /// Model to serve: a local directory, a .gguf file or a Hugging Face hub id (default: bundled SmolLM2-135M-Instruct)
    #[arg(long, env)]
    pub model_id: Option<String>,

    /// The GGUF file to serve of a --model-id directory or hub repo that holds several
    #[arg(long, env)]
    pub gguf_file: Option<String>,

    /// Hub revision (branch, tag or commit) of --model-id (default: main)
    #[arg(long, env)]
    pub revision: Option<String>,

    /// Directory for converted checkpoints (default model, GGUF and .bin -> safetensors) (default: ~/.cache/ferrite/models)
    #[arg(long, env)]
    pub model_cache_dir: Option<PathBuf>,

    /// LoRA adapters served beside the model, comma-separated: name=DIR, name=HUB_ID, or a hub id alone (named after itself); a request picks one with adapter_id (OpenAI: model)
    #[arg(long, env, value_delimiter = ',')]
    pub lora_adapters: Vec<String>,

    /// Largest rank a LoRA adapter may have; a higher one stops start-up naming it
    #[arg(long, env, default_value_t = 64)]
    pub max_lora_rank: u32,

    /// Most distinct LoRA adapters among the requests of one step; requests of another adapter wait (the base model does not count)
    #[arg(long, env, default_value_t = 8)]
    pub max_loras_per_batch: u32,

    /// Number of tensor-parallel shards (processes) to run the model on
    #[arg(long, env, default_value_t = 1)]
    pub num_shard: u32,

    /// Compute dtype; auto = the checkpoint's dtype on GPU; on CPU bfloat16 with native bf16
    /// instructions (AVX-512 BF16, AMX), else float32
    #[arg(long, env, value_enum, default_value_t = Dtype::Auto)]
    pub dtype: Dtype,

    /// Attention implementation; auto = triton on CUDA, torch on CPU
    #[arg(long, env, value_enum, default_value_t = AttentionBackend::Auto)]
    pub attention_backend: AttentionBackend,

    /// Decode batch sizes captured as CUDA graphs, e.g. 1,2,4,8 (CUDA with triton attention);
    /// 0 turns them off; default: buckets up to the max batch size
    #[arg(long, env, value_delimiter = ',')]
    pub cuda_graphs: Option<Vec<u32>>,

    /// Quantize the weights (default: none, or the checkpoint's own quantization_config)
    #[arg(long, env, value_enum)]
    pub quantize: Option<Quantize>,

    /// Run a checkpoint's own Python code (`auto_map` in config.json); such models run on
    /// the transformers fallback and start only with this flag (as in TGI)
    #[arg(long, env)]
    pub trust_remote_code: bool,

    /// Which code runs the model: ferrite's own file, or the transformers fallback
    #[arg(long, env, value_enum, default_value_t = ModelImplementation::Auto)]
    pub model_implementation: ModelImplementation,

    /// How idle OpenMP (torch) threads of CPU shards wait: adaptive spins ~10k iterations first, and a bfloat16 shard runs each step of up to 8 rows on one thread or on all, whichever its step times measure faster at the time (fast on free cores, keeps its speed beside a busy process); passive sleeps at once and runs steps of up to 8 rows on one thread; spin spins ~10k iterations first and runs every step on all threads (collapses when another process competes); active spins; runtime leaves it to the OpenMP runtime
    #[arg(long, env, default_value = "adaptive", value_parser = ["adaptive", "passive", "spin", "active", "runtime"], ignore_case = true)]
    pub omp_wait_policy: String,

    /// CPU shards run the forward of a step of at most this many rows on one torch thread (0: every step on all threads); default 8 with `--omp-wait-policy adaptive` or `passive`, else 0
    #[arg(long, env)]
    pub cpu_single_thread_max_rows: Option<u32>,

    /// KV cache storage; fp8 halves its memory per token
    #[arg(long, env, value_enum, default_value_t = KvCacheDtype::Auto)]
    pub kv_cache_dtype: KvCacheDtype,

    /// Address the HTTP server binds to
    #[arg(long, env, default_value = "0.0.0.0")]
    pub hostname: String,

    /// Port the HTTP server listens on
    #[arg(long, short, env, default_value_t = 3000)]
    pub port: u16,

    /// Longest prompt in tokens (default: derived from the model and the KV capacity)
    #[arg(long, env)]
    pub max_input_tokens: Option<u32>,

    /// Longest prompt + generation in tokens (default: derived from the model and the KV capacity)
    #[arg(long, env)]
    pub max_total_tokens: Option<u32>,

    /// Most prompt tokens computed in one forward pass (default: derived by the router)
    #[arg(long, env)]
    pub max_batch_prefill_tokens: Option<u32>,

    /// Most tokens (prompt + generated) of all running requests (default: the measured KV capacity)
    #[arg(long, env)]
    pub max_batch_total_tokens: Option<u32>,

    /// Most requests in one step (default 256)
    #[arg(long, env)]
    pub max_batch_size: Option<u32>,

    /// Requests accepted at once (running + waiting); more are refused with 429
    #[arg(long, env, default_value_t = 128)]
    pub max_concurrent_requests: u32,

    /// Reuse the KV blocks of identical token prefixes (shared prompts, earlier conversation turns, n / best_of candidates): on or off
    #[arg(long, env, default_value = "on", value_parser = ["on", "off"])]
    pub prefix_caching: String,

    /// Plan and send each step while the shard still computes the previous one (vLLM's asynchronous scheduling): auto (= on), on or off (CPU shards whose every step uses every core, e.g. with --omp-wait-policy spin, may run faster off); outputs are the same either way, and --speculate turns it off
    #[arg(long, env, default_value = "auto", value_parser = ["auto", "on", "off"])]
    pub async_scheduling: String,

    /// Speculative decoding (TGI's flag): up to this many tokens proposed per decode step and verified in the same forward; greedy and seeded outputs are unchanged (default: off)
    #[arg(long, env)]
    pub speculate: Option<u32>,

    /// How --speculate proposes tokens: ngram (lookup in the request's own prompt and output) or draft (a smaller model, --draft-model-id)
    #[arg(long, env, default_value = "ngram", value_parser = ["ngram", "draft"])]
    pub speculative_method: String,

    /// --speculative-method draft: a smaller causal LM with --model-id's tokenizer, run by every shard beside the model (a local directory or a hub id, prepared like --model-id)
    #[arg(long, env)]
    pub draft_model_id: Option<String>,

    /// Longest a request may take from arrival to its last token, in seconds (408 if it was still queued, 504 once generating); a client may ask for less with the x-request-timeout-s header (default: no limit)
    #[arg(long, env)]
    pub request_timeout_s: Option<f64>,

    /// Seconds a stream waits for its first token before it starts with SSE keep-alive comments, sent again after each such quiet interval (default: 10)
    #[arg(long, env)]
    pub stream_keep_alive_s: Option<f64>,

    /// Memory for the KV cache, e.g. 2GiB or 500MB (default: measured free memory)
    #[arg(long, env, value_parser = parse_byte_size)]
    pub kv_cache_memory: Option<u64>,

    /// Path prefix of the shards' unix sockets; rank N listens on <prefix>-N (default: /tmp/ferrite-server-<launcher pid>)
    #[arg(long, env)]
    pub shard_uds_path: Option<PathBuf>,

    /// torch.distributed rendezvous address of the shards (multi-node: node 0's address, reachable from every node)
    #[arg(long, env, default_value = "127.0.0.1")]
    pub master_addr: String,

    /// torch.distributed rendezvous port of the shards (on the master address)
    #[arg(long, env, default_value_t = 29500)]
    pub master_port: u16,

    /// Number of nodes (hosts) the shards span; each runs --num-shard of them (tensor parallelism over all)
    #[arg(long, env, default_value_t = 1)]
    pub nnodes: u32,

    /// This node's index among --nnodes; node 0 runs rank 0 (the rendezvous) and the router
    #[arg(long, env, default_value_t = 0)]
    pub node_rank: u32,

    /// Seconds a tensor-parallel collective may wait for the other ranks before the shards exit with an error
    #[arg(long, env, default_value_t = 120)]
    pub collective_timeout_s: u64,

    /// Seconds the shards wait at start-up for every rank (on every node) to join
    #[arg(long, env, default_value_t = 900)]
    pub rendezvous_timeout_s: u64,

    /// Multi-node, nodes other than 0: first TCP port of this node's shard gRPC servers (its Nth shard on port + N; 0: any free port)
    #[arg(long, env, default_value_t = 0)]
    pub shard_grpc_port: u16,

    /// Multi-node, nodes other than 0: this node's address as node 0 reaches it (default: the local address on the route to --master-addr)
    #[arg(long, env)]
    pub advertise_addr: Option<String>,

    /// Require `Authorization: Bearer <key>` on generating routes (default: no authentication)
    #[arg(long, env, hide_env_values = true)]
    pub api_key: Option<String>,

    /// Allowed CORS origins, repeatable or comma-separated (default: none)
    #[arg(long, env, value_delimiter = ',')]
    pub cors_allow_origin: Vec<String>,

    /// Log one JSON object per line instead of text
    #[arg(long, env)]
    pub json_output: bool,

    /// OpenTelemetry OTLP/gRPC endpoint (e.g. http://localhost:4317) the router and shards export traces to (default: tracing off)
    #[arg(long, env)]
    pub otlp_endpoint: Option<String>,

    /// Service name prefix of the exported spans: <name>.router and <name>.shard
    #[arg(long, env, default_value = "ferrite")]
    pub otlp_service_name: String,

    /// Port of the router's second, metrics-only listener (GET /metrics)
    #[arg(long, env, default_value_t = 9000)]
    pub prometheus_port: u16,

    /// Lowest log level of the launcher, router and shards (RUST_LOG, when set, refines the router's)
    #[arg(long, env, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// Seconds in-flight requests get to finish on shutdown before children are killed
    #[arg(long, env, default_value_t = 10)]
    pub graceful_shutdown_timeout_s: u64,

    /// Times a crashed shard group is restarted (its requests are replayed by the router); then the launcher exits with the shard's last error. 0: exit at the first crash. Single-node only
    #[arg(long, env, default_value_t = 3)]
    pub max_shard_restarts: u32,

    /// Text Generation Inference's flags, accepted with TGI's meaning (tgi_flags.rs).
    #[command(flatten)]
    pub tgi: crate::tgi_flags::TgiFlags,
}

/// Parses "2GiB", "500MB", "1.5G" or a plain byte count into bytes.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split_at = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split_at);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size (examples: 2GiB, 500MB, 1073741824)"))?;
    let multiplier: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "ti" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit '{other}' in '{text}'")),
    };
    let bytes = value * multiplier;
    if !bytes.is_finite() || bytes < 1.0 {
        return Err(format!("'{text}' must be at least one byte"));
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn sizes_parse_with_decimal_and_binary_units() {
        assert_eq!(parse_byte_size("1024"), Ok(1024));
        assert_eq!(parse_byte_size("2GiB"), Ok(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_byte_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_byte_size("1.5g"), Ok(1_500_000_000));
        assert!(parse_byte_size("lots").is_err());
        assert!(parse_byte_size("3 parsecs").is_err());
        assert!(parse_byte_size("0").is_err());
    }

    #[test]
    fn defaults_match_the_help() {
        let args = Args::try_parse_from(["ferrite-launcher"]).expect("no flags is valid");
        assert_eq!(args.model_id, None);
        assert_eq!(args.num_shard, 1);
        assert_eq!(args.port, 3000);
        assert_eq!(args.dtype, Dtype::Auto);
        assert_eq!(args.master_port, 29500);
        assert_eq!((args.nnodes, args.node_rank), (1, 0));
        assert_eq!(args.collective_timeout_s, 120);
        assert!(!args.json_output);
    }

    #[test]
    fn flags_parse() {
        let args = Args::try_parse_from([
            "ferrite-launcher",
            "--model-id",
            "org/name",
            "--num-shard",
            "2",
            "--dtype",
            "float32",
            "--kv-cache-memory",
            "1GiB",
            "--cors-allow-origin",
            "http://a,http://b",
            "--json-output",
        ])
        .expect("valid flags");
        assert_eq!(args.model_id.as_deref(), Some("org/name"));
        assert_eq!(args.num_shard, 2);
        assert_eq!(args.dtype, Dtype::Float32);
        assert_eq!(args.kv_cache_memory, Some(1 << 30));
        assert_eq!(args.cors_allow_origin, vec!["http://a", "http://b"]);
        assert!(args.json_output);
    }

    #[test]
    fn the_version_says_when_the_build_is_unoptimized() {
        let version = Args::command().render_version();
        assert!(version.starts_with(concat!("ferrite-launcher ", env!("CARGO_PKG_VERSION"))));
        assert_eq!(version.contains("(debug build)"), cfg!(debug_assertions));
    }

    #[test]
    fn every_flag_has_an_env_var_and_a_one_line_help() {
        let command = Args::command();
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let env = arg
                .get_env()
                .unwrap_or_else(|| panic!("--{id} has no env var"));
            assert_eq!(env.to_string_lossy(), id.to_ascii_uppercase());
            let help = arg
                .get_help()
                .unwrap_or_else(|| panic!("--{id} has no help"));
            assert!(!help.to_string().contains('\n'), "--{id} help spans lines");
        }
    }
}
