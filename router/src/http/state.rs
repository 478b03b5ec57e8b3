//! What every handler shares: the scheduler handle, the validator, the generation context,
//! metrics, health and the immutable answers (/info).

use std::ops::Deref;
use std::sync::Arc;

use crate::api::info::Info;
use crate::config::{RouterConfig, ServerConfig};
use crate::error::ApiError;
use crate::generation::GenerationContext;
use crate::metrics::{Metrics, RequestRecord};
use crate::scheduler::interface::RequestSubmitter;
use crate::telemetry::request_log;
use crate::tokenizer::TextTokenizer;
use crate::validation::grammar::{self, GrammarCompiler};
use crate::validation::Validator;

use super::health::HealthState;

#[derive(Clone)]
pub struct AppState {
    inner: Arc<AppInner>,
}

pub struct AppInner {
    pub submitter: Arc<dyn RequestSubmitter>,
    pub validator: Validator,
    pub generation: GenerationContext,
    pub health: HealthState,
    pub info: Info,
    pub server: ServerConfig,
    /// `x-compute-type` header value: the shard's device type.
    pub compute_type: String,
    /// The OpenAI routes' chat template and response constants.
    pub openai: crate::openai::OpenAiState,
}

impl Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.inner
    }
}

impl AppState {
    /// Grammars are accepted unchecked (tests without a shard); see `with_grammars`.
    pub fn new(
        config: &RouterConfig,
        tokenizer: Arc<TextTokenizer>,
        submitter: Arc<dyn RequestSubmitter>,
    ) -> Self {
        Self::with_grammars(config, tokenizer, submitter, grammar::accept_all())
    }

    pub fn with_grammars(
        config: &RouterConfig,
        tokenizer: Arc<TextTokenizer>,
        submitter: Arc<dyn RequestSubmitter>,
        grammars: Arc<dyn GrammarCompiler>,
    ) -> Self {
        let metrics = Arc::new(Metrics::default());
        let limits = config.limits.clone();
        let inner = AppInner {
            submitter,
            validator: Validator::with_grammars(
                Arc::clone(&tokenizer),
                limits,
                grammars,
                Arc::clone(&metrics),
            ),
            health: HealthState::new(&tokenizer),
            generation: GenerationContext { tokenizer, metrics },
            info: info(config),
            server: config.server.clone(),
            compute_type: config.model.device_type.clone(),
            openai: crate::openai::OpenAiState::load(
                &config.model.tokenizer_dir,
                config.model.tokenizer_config_path.as_deref(),
            ),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.generation.metrics
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.generation.tokenizer
    }

    /// Records a finished request: its metrics and its log line.
    pub fn request_succeeded(&self, record: &RequestRecord) {
        self.metrics().request_succeeded(record);
        request_log::finished(record);
    }

    /// Records a failed request (metric by error type; a generation failure also makes the
    /// next /health run a real generation) and hands the error back for the response.
    pub fn request_failed(&self, error: ApiError) -> ApiError {
        self.metrics().request_failed(error.error_type());
        request_log::failed(error.error_type(), &error);
        // A request past its own deadline says nothing about the shards' health.
        let is_shard_failure = matches!(error, ApiError::Generation(ref failure)
            if !matches!(failure, crate::scheduler::interface::GenerationError::TimedOut { .. }));
        if is_shard_failure {
            self.health.mark_failed();
        }
        error
    }
}

fn info(config: &RouterConfig) -> Info {
    Info {
        model_id: config.model.model_id.clone(),
        model_sha: None,
        model_dtype: config.model.dtype.clone(),
        model_device_type: config.model.device_type.clone(),
        model_pipeline_tag: Some("text-generation".into()),
        max_concurrent_requests: config.batching.max_concurrent_requests,
        max_best_of: config.limits.max_best_of,
        max_stop_sequences: config.limits.max_stop_sequences,
        max_input_tokens: config.limits.max_input_tokens,
        max_total_tokens: config.limits.max_total_tokens,
        max_top_n_tokens: config.limits.max_top_n_tokens,
        max_batch_prefill_tokens: config.batching.max_batch_prefill_tokens,
        max_batch_total_tokens: config.batching.max_batch_total_tokens,
        max_batch_size: config.batching.max_batch_size,
        max_client_batch_size: config.limits.max_client_batch_size,
        router: env!("CARGO_PKG_NAME").into(),
        version: env!("CARGO_PKG_VERSION").into(),
        sha: None,
        docker_label: None,
        model_architecture: config.model.architecture.clone(),
        kv_block_size: config.model.block_size,
        kv_num_blocks: config.batching.num_blocks,
        attention_backend: config.model.attention_backend.clone(),
        model_implementation: config.model.model_implementation.clone(),
        speculate: config.batching.num_speculative_tokens,
        structured_output: vec!["json".into(), "regex".into()],
        prefix_caching: config.batching.prefix_caching,
        quantize: config.model.quantization.clone(),
        kv_cache_dtype: config.model.kv_cache_dtype.clone(),
        num_shards: config.model.num_shards,
        lora_adapters: config.model.lora_adapters.clone(),
    }
}
