//! The router's one typed, immutable configuration, built at start-up from the flags, the
//! shard's Info and the KV capacity its Warmup measured. Nothing else reads the environment.

mod args;
mod resolve;

pub use args::RouterArgs;
pub use resolve::{plan_warmup, resolve, ConfigError, WarmupPlan};

use crate::scheduler::interface::SchedulerConfig;

#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub server: ServerConfig,
    pub model: ModelFacts,
    pub limits: RequestLimits,
    pub batching: BatchLimits,
}

/// How the HTTP server listens and whom it lets in.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    pub hostname: String,
    pub port: u16,
    pub api_key: Option<String>,
    pub cors_allow_origins: Vec<String>,
    pub payload_limit_bytes: usize,
    pub json_output: bool,
    pub log_filter: String,
    pub otlp_endpoint: Option<String>,
    /// A second listener serving only /metrics.
    pub prometheus_port: Option<u16>,
    /// Longest a request may take (arrival to last token); None: no limit.
    pub request_timeout: Option<std::time::Duration>,
    /// How long a stream waits for its first token before it starts with keep-alive comments.
    pub stream_keep_alive: std::time::Duration,
}

/// What the shard reported about the model (Info), for /info and the limits.
#[derive(Debug, Clone, Default)]
pub struct ModelFacts {
    pub model_id: String,
    pub architecture: String,
    pub dtype: String,
    /// `cpu` or `cuda` (the shard's device without its index).
    pub device_type: String,
    pub attention_backend: String,
    /// `native` (a ferrite model file) or `transformers` (the fallback for other causal LMs).
    pub model_implementation: String,
    pub quantization: Option<String>,
    /// `auto` or `fp8`.
    pub kv_cache_dtype: String,
    pub num_shards: usize,
    pub block_size: usize,
    pub max_position_embeddings: usize,
    /// The model directory (tokenizer.json, tokenizer_config.json, chat template).
    pub tokenizer_dir: std::path::PathBuf,
    /// A tokenizer_config.json that replaces the model directory's (chat template, special
    /// tokens).
    pub tokenizer_config_path: Option<std::path::PathBuf>,
    /// LoRA adapters the shard loaded (Info), by name.
    pub lora_adapters: Vec<String>,
}

/// What a single request may ask for (validation's limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLimits {
    pub max_input_tokens: usize,
    pub max_total_tokens: usize,
    pub max_best_of: usize,
    pub max_stop_sequences: usize,
    pub max_top_n_tokens: u32,
    /// Most prompts in one `/v1/completions` request.
    pub max_client_batch_size: usize,
    /// Whether the shard can return prompt logprobs (`decoder_input_details`).
    pub supports_prompt_logprobs: bool,
    /// Which LoRA adapter names a request may ask for.
    pub adapters: crate::validation::adapter::Adapters,
}

/// What the scheduler works within.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_batch_prefill_tokens: usize,
    pub max_batch_total_tokens: usize,
    pub max_batch_size: usize,
    /// Waiting-queue bound: beyond it, 429.
    pub max_concurrent_requests: usize,
    /// KV blocks the shard allocated (Warmup).
    pub num_blocks: usize,
    /// Whether identical token prefixes share KV blocks.
    pub prefix_caching: bool,
    /// `--speculate`: tokens proposed and verified per decode step (0: off).
    pub num_speculative_tokens: usize,
    /// Most distinct LoRA adapters among one step's requests (`--max-loras-per-batch`).
    pub max_loras_per_batch: usize,
    /// `--async-scheduling`: the next step is sent while the shard computes the current one.
    pub async_scheduling: bool,
}

impl RouterConfig {
    pub fn scheduler_config(&self) -> SchedulerConfig {
        SchedulerConfig {
            block_size: self.model.block_size,
            num_blocks: self.batching.num_blocks,
            max_batch_prefill_tokens: self.batching.max_batch_prefill_tokens,
            max_batch_total_tokens: self.batching.max_batch_total_tokens,
            max_batch_size: self.batching.max_batch_size,
            max_total_tokens: self.limits.max_total_tokens,
            max_waiting_requests: self.batching.max_concurrent_requests,
            prefix_caching: self.batching.prefix_caching,
            num_speculative_tokens: self.batching.num_speculative_tokens,
            max_loras_per_batch: self.batching.max_loras_per_batch,
            async_scheduling: self.batching.async_scheduling,
        }
    }
}
