//! Deriving the limits (DESIGN.md pain point 1): unset flags get defaults from the model and the
//! measured KV capacity; impossible combinations are refused with the numbers that conflict.
//! Two pure steps around the shard handshake: `plan_warmup` (flags + Info -> what Warmup is
//! asked to size for) and `resolve` (+ Warmup's answer -> RouterConfig).

use std::time::Duration;

use crate::proto;
use crate::validation::adapter::Adapters;

use super::{BatchLimits, ModelFacts, RequestLimits, RouterArgs, RouterConfig, ServerConfig};

/// Largest default prefill chunk: bigger chunks barely speed prefill up and delay decodes.
const DEFAULT_MAX_PREFILL_CHUNK_TOKENS: usize = 4096;
const DEFAULT_MAX_TOP_N_TOKENS: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("the shard reported {field} = 0; it cannot serve")]
    ShardReportedZero { field: &'static str },
    #[error("`{flag}` must be at least 1")]
    Zero { flag: &'static str },
    #[error("`{flag}` must be a positive number of seconds, not {given}")]
    NotPositiveSeconds { flag: &'static str, given: String },
    #[error("`max_total_tokens` ({max_total_tokens}) exceeds the model's max_position_embeddings ({max_position_embeddings})")]
    TotalAboveModel {
        max_total_tokens: usize,
        max_position_embeddings: usize,
    },
    #[error(
        "`max_input_tokens` ({max_input_tokens}) must be < `max_total_tokens` ({max_total_tokens})"
    )]
    InputNotBelowTotal {
        max_input_tokens: usize,
        max_total_tokens: usize,
    },
    #[error("`max_batch_prefill_tokens` ({max_batch_prefill_tokens}) must be >= `max_input_tokens` ({max_input_tokens}): this shard cannot chunk prompts")]
    PrefillBelowInput {
        max_batch_prefill_tokens: usize,
        max_input_tokens: usize,
    },
    #[error("`max_batch_total_tokens` ({max_batch_total_tokens}) exceeds the KV cache capacity the shard measured ({capacity_tokens} tokens = {num_blocks} blocks of {block_size})")]
    BatchTotalAboveCapacity {
        max_batch_total_tokens: usize,
        capacity_tokens: usize,
        num_blocks: usize,
        block_size: usize,
    },
    #[error("`max_total_tokens` ({max_total_tokens}) exceeds `max_batch_total_tokens` ({max_batch_total_tokens}): one request would not fit in the KV cache")]
    TotalAboveBatchTotal {
        max_total_tokens: usize,
        max_batch_total_tokens: usize,
    },
    #[error("`max_batch_prefill_tokens` ({max_batch_prefill_tokens}) exceeds `max_batch_total_tokens` ({max_batch_total_tokens})")]
    PrefillAboveBatchTotal {
        max_batch_prefill_tokens: usize,
        max_batch_total_tokens: usize,
    },
    #[error("`max_top_n_tokens` ({given}) exceeds what the shard supports ({supported})")]
    TopNAboveShard { given: u32, supported: u32 },
}

/// What Warmup is asked to size for, plus which limits the user fixed (the others may still
/// shrink to the measured capacity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmupPlan {
    pub max_total_tokens: usize,
    pub max_input_tokens: usize,
    pub max_batch_prefill_tokens: usize,
    pub max_batch_size: usize,
    pub num_speculative_tokens: usize,
}

impl WarmupPlan {
    pub fn request(&self) -> proto::WarmupRequest {
        let to_u32 = |value: usize| u32::try_from(value).unwrap_or(u32::MAX);
        proto::WarmupRequest {
            max_batch_prefill_tokens: to_u32(self.max_batch_prefill_tokens),
            max_batch_size: to_u32(self.max_batch_size),
            max_total_tokens: to_u32(self.max_total_tokens),
            num_speculative_tokens: to_u32(self.num_speculative_tokens),
        }
    }
}

pub fn plan_warmup(
    args: &RouterArgs,
    info: &proto::InfoResponse,
) -> Result<WarmupPlan, ConfigError> {
    let max_position_embeddings = info.max_position_embeddings as usize;
    if max_position_embeddings == 0 {
        return Err(ConfigError::ShardReportedZero {
            field: "max_position_embeddings",
        });
    }
    if info.block_size == 0 {
        return Err(ConfigError::ShardReportedZero {
            field: "block_size",
        });
    }
    for (flag, value) in [
        ("max_batch_size", args.max_batch_size),
        ("max_concurrent_requests", args.max_concurrent_requests),
        ("max_best_of", args.max_best_of),
        ("max_client_batch_size", args.max_client_batch_size),
        ("max_loras_per_batch", args.max_loras_per_batch),
        ("max_input_tokens", args.max_input_tokens.unwrap_or(1)),
        (
            "max_batch_prefill_tokens",
            args.max_batch_prefill_tokens.unwrap_or(1),
        ),
    ] {
        if value == 0 {
            return Err(ConfigError::Zero { flag });
        }
    }
    let max_total_tokens = args.max_total_tokens.unwrap_or(max_position_embeddings);
    if max_total_tokens > max_position_embeddings {
        return Err(ConfigError::TotalAboveModel {
            max_total_tokens,
            max_position_embeddings,
        });
    }
    let max_input_tokens = input_tokens_within(args.max_input_tokens, max_total_tokens)?;
    let max_batch_prefill_tokens =
        prefill_tokens(args.max_batch_prefill_tokens, max_input_tokens, info)?;
    Ok(WarmupPlan {
        max_total_tokens,
        max_input_tokens,
        max_batch_prefill_tokens,
        max_batch_size: args.max_batch_size,
        num_speculative_tokens: args.speculate,
    })
}

fn input_tokens_within(
    given: Option<usize>,
    max_total_tokens: usize,
) -> Result<usize, ConfigError> {
    let max_input_tokens = given.unwrap_or(max_total_tokens.saturating_sub(1));
    if max_input_tokens == 0 || max_input_tokens >= max_total_tokens {
        return Err(ConfigError::InputNotBelowTotal {
            max_input_tokens,
            max_total_tokens,
        });
    }
    Ok(max_input_tokens)
}

fn prefill_tokens(
    given: Option<usize>,
    max_input_tokens: usize,
    info: &proto::InfoResponse,
) -> Result<usize, ConfigError> {
    let max_batch_prefill_tokens = match (given, info.supports_chunked_prefill) {
        (Some(given), _) => given,
        (None, true) => max_input_tokens.min(DEFAULT_MAX_PREFILL_CHUNK_TOKENS),
        (None, false) => max_input_tokens,
    };
    if !info.supports_chunked_prefill && max_batch_prefill_tokens < max_input_tokens {
        return Err(ConfigError::PrefillBelowInput {
            max_batch_prefill_tokens,
            max_input_tokens,
        });
    }
    Ok(max_batch_prefill_tokens)
}

/// The final configuration once Warmup answered how much KV the shard holds.
pub fn resolve(
    args: &RouterArgs,
    info: &proto::InfoResponse,
    plan: &WarmupPlan,
    warmup: &proto::WarmupResponse,
) -> Result<RouterConfig, ConfigError> {
    let block_size = info.block_size as usize;
    let num_blocks = warmup.num_blocks as usize;
    let capacity_tokens = usize::try_from(warmup.max_supported_total_tokens).unwrap_or(usize::MAX);
    if num_blocks == 0 || capacity_tokens == 0 {
        return Err(ConfigError::ShardReportedZero {
            field: "num_blocks",
        });
    }
    let max_batch_total_tokens = args.max_batch_total_tokens.unwrap_or(capacity_tokens);
    if max_batch_total_tokens > capacity_tokens {
        return Err(ConfigError::BatchTotalAboveCapacity {
            max_batch_total_tokens,
            capacity_tokens,
            num_blocks,
            block_size,
        });
    }
    // Defaults shrink to what fits; numbers the user gave are checked, never changed.
    let max_total_tokens = match args.max_total_tokens {
        Some(given) if given > max_batch_total_tokens => {
            return Err(ConfigError::TotalAboveBatchTotal {
                max_total_tokens: given,
                max_batch_total_tokens,
            })
        }
        Some(given) => given,
        None => plan.max_total_tokens.min(max_batch_total_tokens),
    };
    let max_input_tokens = input_tokens_within(args.max_input_tokens, max_total_tokens)?;
    let max_batch_prefill_tokens = match args.max_batch_prefill_tokens {
        Some(given) if given > max_batch_total_tokens => {
            return Err(ConfigError::PrefillAboveBatchTotal {
                max_batch_prefill_tokens: given,
                max_batch_total_tokens,
            })
        }
        Some(given) => given,
        None => prefill_tokens(None, max_input_tokens, info)?.min(plan.max_batch_prefill_tokens),
    };
    let max_top_n_tokens = top_n_tokens(args.max_top_n_tokens, info.max_top_n_tokens)?;
    let model = model_facts(args, info);
    let adapters = Adapters::new(&model.model_id, &model.lora_adapters);
    Ok(RouterConfig {
        server: server_config(args)?,
        model,
        limits: RequestLimits {
            max_input_tokens,
            max_total_tokens,
            max_best_of: args.max_best_of,
            max_stop_sequences: args.max_stop_sequences,
            max_top_n_tokens,
            max_client_batch_size: args.max_client_batch_size,
            supports_prompt_logprobs: info.supports_prompt_logprobs,
            adapters,
        },
        batching: BatchLimits {
            max_batch_prefill_tokens,
            max_batch_total_tokens,
            max_batch_size: args.max_batch_size,
            max_concurrent_requests: args.max_concurrent_requests,
            num_blocks,
            prefix_caching: args.prefix_caching.is_on(),
            num_speculative_tokens: args.speculate,
            max_loras_per_batch: args.max_loras_per_batch,
            async_scheduling: args.async_scheduling.is_on(),
        },
    })
}

fn top_n_tokens(given: Option<u32>, supported: u32) -> Result<u32, ConfigError> {
    match given {
        Some(given) if given > supported => Err(ConfigError::TopNAboveShard { given, supported }),
        Some(given) => Ok(given),
        None => Ok(DEFAULT_MAX_TOP_N_TOKENS.min(supported)),
    }
}

fn positive_seconds(flag: &'static str, given: f64) -> Result<Duration, ConfigError> {
    if given.is_finite() && given > 0.0 {
        Ok(Duration::from_secs_f64(given))
    } else {
        Err(ConfigError::NotPositiveSeconds {
            flag,
            given: given.to_string(),
        })
    }
}

fn server_config(args: &RouterArgs) -> Result<ServerConfig, ConfigError> {
    let request_timeout = args
        .request_timeout_s
        .map(|seconds| positive_seconds("request_timeout_s", seconds))
        .transpose()?;
    let stream_keep_alive = positive_seconds("stream_keep_alive_s", args.stream_keep_alive_s)?;
    Ok(ServerConfig {
        hostname: args.hostname.clone(),
        port: args.port,
        api_key: args.api_key.clone().filter(|key| !key.is_empty()),
        cors_allow_origins: args.cors_allow_origin.clone(),
        payload_limit_bytes: args.payload_limit,
        json_output: args.json_output,
        log_filter: args.effective_log_filter(),
        otlp_endpoint: args.otlp_endpoint.clone(),
        prometheus_port: args.prometheus_port,
        request_timeout,
        stream_keep_alive,
    })
}

fn model_facts(args: &RouterArgs, info: &proto::InfoResponse) -> ModelFacts {
    let device_type = info
        .device
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    ModelFacts {
        model_id: args
            .model_id
            .clone()
            .unwrap_or_else(|| info.model_id.clone()),
        architecture: info.architecture.clone(),
        dtype: info.dtype.clone(),
        device_type,
        attention_backend: info.attention_backend.clone(),
        model_implementation: if info.model_implementation.is_empty() {
            "native".to_string()
        } else {
            info.model_implementation.clone()
        },
        quantization: Some(info.quantization.clone()).filter(|q| !q.is_empty()),
        kv_cache_dtype: if info.kv_cache_dtype.is_empty() {
            "auto".to_string()
        } else {
            info.kv_cache_dtype.clone()
        },
        // Multi-node: the router is given node 0's sockets; the group counts every rank.
        num_shards: args.shard_uds_paths.len().max(info.world_size as usize),
        block_size: info.block_size as usize,
        max_position_embeddings: info.max_position_embeddings as usize,
        tokenizer_dir: args.tokenizer_dir.clone(),
        tokenizer_config_path: args.tokenizer_config_path.clone(),
        lora_adapters: info.lora_adapters.clone(),
    }
}

#[cfg(test)]
mod tests;
