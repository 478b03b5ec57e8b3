//! Test helpers shared by the crate's unit tests: tiny tokenizers, a fake scheduler and a
//! ready-made configuration / app state.

pub mod fake_submitter;
pub mod lcg;
pub mod step_contract;
pub mod tiny_tokenizer;

use std::sync::Arc;

use crate::config::{BatchLimits, ModelFacts, RequestLimits, RouterConfig, ServerConfig};
use crate::http::AppState;
use crate::scheduler::interface::RequestSubmitter;
use crate::tokenizer::TextTokenizer;

/// Small limits so length errors are easy to provoke.
pub fn test_config() -> RouterConfig {
    RouterConfig {
        server: ServerConfig {
            hostname: "127.0.0.1".into(),
            port: 0,
            payload_limit_bytes: 4096,
            stream_keep_alive: std::time::Duration::from_secs(10),
            ..Default::default()
        },
        model: ModelFacts {
            model_id: "tiny".into(),
            architecture: "LlamaForCausalLM".into(),
            dtype: "float32".into(),
            device_type: "cpu".into(),
            attention_backend: "torch".into(),
            model_implementation: "native".into(),
            kv_cache_dtype: "auto".into(),
            num_shards: 1,
            block_size: 16,
            max_position_embeddings: 128,
            ..Default::default()
        },
        limits: RequestLimits {
            max_input_tokens: 32,
            max_total_tokens: 64,
            max_best_of: 3,
            max_stop_sequences: 2,
            max_top_n_tokens: 3,
            max_client_batch_size: 4,
            supports_prompt_logprobs: true,
            adapters: crate::validation::adapter::Adapters::new("tiny", &[]),
        },
        batching: BatchLimits {
            max_batch_prefill_tokens: 64,
            max_batch_total_tokens: 1024,
            max_batch_size: 8,
            max_concurrent_requests: 2,
            num_blocks: 64,
            prefix_caching: true,
            num_speculative_tokens: 0,
            max_loras_per_batch: 8,
            async_scheduling: true,
        },
    }
}

pub fn test_state(
    config: &RouterConfig,
    tokenizer: Arc<TextTokenizer>,
    submitter: Arc<dyn RequestSubmitter>,
) -> AppState {
    AppState::new(config, tokenizer, submitter)
}
