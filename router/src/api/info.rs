//! Body of `GET /info`: TGI's fields (clients and dashboards read them) plus ferrite's own
//! facts about the KV cache and the shards.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Info {
    #[schema(example = "HuggingFaceTB/SmolLM2-135M-Instruct")]
    pub model_id: String,
    #[schema(nullable)]
    pub model_sha: Option<String>,
    #[schema(example = "bfloat16")]
    pub model_dtype: String,
    /// `cpu` or `cuda`.
    #[schema(example = "cuda")]
    pub model_device_type: String,
    #[schema(nullable, example = "text-generation")]
    pub model_pipeline_tag: Option<String>,
    /// Most requests waiting for admission before new ones get 429.
    #[schema(example = 128)]
    pub max_concurrent_requests: usize,
    #[schema(example = 2)]
    pub max_best_of: usize,
    #[schema(example = 4)]
    pub max_stop_sequences: usize,
    #[schema(example = 1024)]
    pub max_input_tokens: usize,
    #[schema(example = 2048)]
    pub max_total_tokens: usize,
    #[schema(example = 5)]
    pub max_top_n_tokens: u32,
    #[schema(example = 4096)]
    pub max_batch_prefill_tokens: usize,
    #[schema(example = 32000)]
    pub max_batch_total_tokens: usize,
    #[schema(example = 256)]
    pub max_batch_size: usize,
    #[schema(example = 1)]
    pub max_client_batch_size: usize,
    #[schema(example = "ferrite-router")]
    pub router: String,
    #[schema(example = "0.1.0")]
    pub version: String,
    #[schema(nullable)]
    pub sha: Option<String>,
    #[schema(nullable)]
    pub docker_label: Option<String>,
    // ferrite's additions.
    #[schema(example = "LlamaForCausalLM")]
    pub model_architecture: String,
    #[schema(example = 16)]
    pub kv_block_size: usize,
    #[schema(example = 2000)]
    pub kv_num_blocks: usize,
    #[schema(example = "torch")]
    pub attention_backend: String,
    /// Which code runs the model: `native` (a ferrite model file) or `transformers` (the
    /// transformers model with ferrite's paged attention, for other architectures).
    #[schema(example = "native")]
    pub model_implementation: String,
    /// Tokens proposed and verified per decode step (`--speculate`, TGI's field; 0: off).
    #[schema(example = 0)]
    pub speculate: usize,
    /// Whether identical token prefixes share KV blocks (`--prefix-caching`).
    #[schema(example = true)]
    pub prefix_caching: bool,
    /// Quantization of the weights in effect (`--quantize` or the checkpoint's), TGI's name.
    #[schema(nullable, example = "gptq")]
    pub quantize: Option<String>,
    /// How the KV cache stores K/V: `auto` (the compute dtype) or `fp8`.
    #[schema(example = "auto")]
    pub kv_cache_dtype: String,
    #[schema(example = 1)]
    pub num_shards: usize,
    /// Output constrained to a grammar: TGI `parameters.grammar` (`json`, `regex`) and OpenAI
    /// `response_format` (`json_object`, `json_schema`).
    #[schema(example = json!(["json", "regex"]))]
    pub structured_output: Vec<String>,
    /// LoRA adapters served beside the base model (`--lora-adapters`): a request names one in
    /// `parameters.adapter_id` (OpenAI: `model`).
    #[schema(example = json!(["customer-support"]))]
    pub lora_adapters: Vec<String>,
}
