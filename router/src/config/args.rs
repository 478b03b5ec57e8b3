//! Command-line flags of `ferrite-router` (normally passed by `ferrite-launcher`). Limits left
//! unset are derived from the model and the KV capacity the shard measured (see `resolve.rs`).

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// A feature switch spelled `on` / `off` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

impl Switch {
    pub fn is_on(self) -> bool {
        self == Switch::On
    }
}

/// `--async-scheduling`: `auto` is `on` (kept as the default's name so a later rule, e.g. per
/// device, can change it without changing the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AsyncScheduling {
    Auto,
    On,
    Off,
}

impl AsyncScheduling {
    /// Whether steps overlap. On a GPU the forward runs on the device meanwhile; a CPU shard
    /// runs the forward of small steps (batch-1 decode) on one thread and leaves a core to the
    /// overlapped work: measured faster there too (bench/RESULTS.md). A CPU shard whose every
    /// step uses every core (`--omp-wait-policy spin`) gains nothing: its users may turn it off.
    pub fn is_on(self) -> bool {
        self != AsyncScheduling::Off
    }
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "ferrite-router",
    version,
    about = "ferrite's HTTP router and scheduler"
)]
pub struct RouterArgs {
    /// Unix socket of one shard rank; repeat the flag once per rank, rank 0 first. Every call
    /// goes to every rank; rank 0's answer is used.
    #[arg(long = "shard-uds-path", required = true, value_name = "PATH")]
    pub shard_uds_paths: Vec<PathBuf>,

    /// How long to keep retrying the shard sockets at start-up.
    #[arg(long, default_value_t = 120)]
    pub shard_connect_timeout_s: u64,

    /// Directory holding tokenizer.json (and tokenizer_config.json, generation_config.json).
    #[arg(long)]
    pub tokenizer_dir: PathBuf,

    /// Model name reported in /info; defaults to what the shard loaded.
    #[arg(long)]
    pub model_id: Option<String>,

    #[arg(long, default_value = "0.0.0.0")]
    pub hostname: String,

    #[arg(long, default_value_t = 3000)]
    pub port: u16,

    /// Longest prompt in tokens; default max_total_tokens - 1.
    #[arg(long)]
    pub max_input_tokens: Option<usize>,

    /// Longest prompt + generation in tokens; default: the model's max_position_embeddings,
    /// capped by the KV cache capacity.
    #[arg(long)]
    pub max_total_tokens: Option<usize>,

    /// Most prompt tokens computed in one step (longer prompts are chunked when the shard
    /// supports it); default min(max_input_tokens, 4096).
    #[arg(long)]
    pub max_batch_prefill_tokens: Option<usize>,

    /// Most tokens resident in the KV cache over all running requests; default: what the
    /// shard's Warmup measured.
    #[arg(long)]
    pub max_batch_total_tokens: Option<usize>,

    /// Most requests in one step.
    #[arg(long, default_value_t = 256)]
    pub max_batch_size: usize,

    /// Most requests waiting for admission; beyond it requests get 429 at once.
    #[arg(long, default_value_t = 128)]
    pub max_concurrent_requests: usize,

    /// Reuse the KV blocks of identical token prefixes (shared prompts, earlier conversation
    /// turns, `n` / `best_of` candidates) instead of computing them again.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub prefix_caching: Switch,

    /// Speculative decoding: each decode step proposes up to this many tokens (n-gram lookup
    /// in the shard) and verifies them in the same forward; outputs are unchanged. 0: off.
    #[arg(long, default_value_t = 0)]
    pub speculate: usize,

    /// Plan and send each step while the shard still computes the one before (the shard
    /// appends the tokens it sampled itself), hiding the router's work and the gRPC round trip
    /// behind the forward; outputs are unchanged. `auto`: on.
    /// Off with `--speculate` (a verify step's token count is only known when it ends).
    #[arg(long, value_enum, default_value_t = AsyncScheduling::Auto)]
    pub async_scheduling: AsyncScheduling,

    /// Most distinct LoRA adapters among the requests of one step; a request of another
    /// adapter waits until one of them has no request left (the base model does not count).
    #[arg(long, default_value_t = 8)]
    pub max_loras_per_batch: usize,

    #[arg(long, default_value_t = 2)]
    pub max_best_of: usize,

    #[arg(long, default_value_t = 4)]
    pub max_stop_sequences: usize,

    /// Largest `top_n_tokens`; default min(5, what the shard supports).
    #[arg(long)]
    pub max_top_n_tokens: Option<u32>,

    /// Longest a request may take from arrival to its last token, in seconds; past it the
    /// request ends with a timeout error (408 while still queued, 504 once generating) and
    /// frees its KV blocks. A request can ask for less with the `x-request-timeout-s` header.
    /// Off by default.
    #[arg(long)]
    pub request_timeout_s: Option<f64>,

    /// A stream still waiting for its first token after this many seconds is started (200)
    /// and sent an SSE comment this often, so proxies and clients do not drop an idle
    /// connection; a failure after that arrives as the stream's error event.
    #[arg(long, default_value_t = 10.0)]
    pub stream_keep_alive_s: f64,

    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 2_000_000)]
    pub payload_limit: usize,

    /// Most prompts in one `/v1/completions` request (TGI's `--max-client-batch-size`).
    #[arg(long, default_value_t = 4)]
    pub max_client_batch_size: usize,

    /// tokenizer_config.json to take the chat template and special tokens from instead of
    /// the one in --tokenizer-dir (TGI's `--tokenizer-config-path`).
    #[arg(long)]
    pub tokenizer_config_path: Option<PathBuf>,

    /// Require `Authorization: Bearer <key>` on the generation routes.
    #[arg(long, env = "FERRITE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Origins allowed by CORS (repeatable); none means no CORS headers.
    #[arg(long)]
    pub cors_allow_origin: Vec<String>,

    /// Log as JSON lines.
    #[arg(long)]
    pub json_output: bool,

    /// Lowest level logged: trace, debug, info, warn or error.
    #[arg(long, default_value = "info")]
    pub log_level: String,

    /// Fine-grained log filter (tracing-subscriber's EnvFilter syntax, e.g.
    /// `info,ferrite_router::request=off`); overrides --log-level when set, as RUST_LOG does.
    #[arg(long, env = "RUST_LOG")]
    pub log_filter: Option<String>,

    /// OpenTelemetry collector (OTLP over gRPC, e.g. http://localhost:4317); traces are only
    /// built and exported when it is set.
    #[arg(long)]
    pub otlp_endpoint: Option<String>,

    /// `service.name` of the exported spans.
    #[arg(long, default_value = "ferrite.router")]
    pub otlp_service_name: String,

    /// Also serve /metrics (and nothing else) on this port, e.g. for a scraper on another
    /// network than the API's.
    #[arg(long)]
    pub prometheus_port: Option<u16>,
}

impl RouterArgs {
    /// The log filter in force: `--log-filter` / RUST_LOG when given, else `--log-level`.
    pub fn effective_log_filter(&self) -> String {
        self.log_filter
            .clone()
            .filter(|filter| !filter.trim().is_empty())
            .unwrap_or_else(|| self.log_level.clone())
    }
}
