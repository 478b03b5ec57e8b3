//! Request bodies of `POST /generate`, `POST /generate_stream`, `POST /` and `POST /tokenize`.
//! Unknown fields are ignored, as TGI does; explicit `null`s mean "not given".

use serde::Deserialize;
use utoipa::ToSchema;

use super::null_as_default;

#[derive(Debug, Clone, Default, PartialEq, Deserialize, ToSchema)]
pub struct GenerateParameters {
    /// Generate this many sampled candidates and return the one with the best mean logprob.
    #[schema(nullable, default = json!(null), example = 1)]
    pub best_of: Option<usize>,
    /// Divides the logits; > 0. Setting it turns sampling on.
    #[schema(nullable, example = 0.5, exclusive_minimum = 0.0)]
    pub temperature: Option<f32>,
    /// Hugging Face repetition penalty; > 0, 1.0 means none.
    #[schema(nullable, example = 1.03, exclusive_minimum = 0.0)]
    pub repetition_penalty: Option<f32>,
    /// OpenAI-style frequency penalty over generated tokens, in [-2, 2].
    #[schema(nullable, example = 0.1, minimum = -2.0, maximum = 2.0)]
    pub frequency_penalty: Option<f32>,
    /// Keep the k most likely tokens; > 0. Setting it turns sampling on.
    #[schema(nullable, example = 10, exclusive_minimum = 0)]
    pub top_k: Option<i32>,
    /// Nucleus sampling mass, in (0, 1). Setting it turns sampling on.
    #[schema(
        nullable,
        example = 0.95,
        exclusive_minimum = 0.0,
        exclusive_maximum = 1.0
    )]
    pub top_p: Option<f32>,
    /// Locally typical sampling mass, in (0, 1). Setting it turns sampling on.
    #[schema(
        nullable,
        example = 0.95,
        exclusive_minimum = 0.0,
        exclusive_maximum = 1.0
    )]
    pub typical_p: Option<f32>,
    /// Sample instead of greedy decoding.
    #[serde(default, deserialize_with = "null_as_default")]
    #[schema(default = false)]
    pub do_sample: bool,
    /// Default: as many as fit in `max_total_tokens`.
    #[schema(nullable, example = 20, exclusive_minimum = 0)]
    pub max_new_tokens: Option<u32>,
    /// Prepend the prompt to `generated_text`.
    #[schema(nullable, default = false)]
    pub return_full_text: Option<bool>,
    /// Stop when the generated text contains one of these; the stop text ends the output.
    #[serde(default, deserialize_with = "null_as_default")]
    #[schema(example = json!(["photographer"]))]
    pub stop: Vec<String>,
    /// Keep only the last `truncate` prompt tokens.
    #[schema(nullable, example = json!(null))]
    pub truncate: Option<usize>,
    /// Watermark the generated tokens (Kirchenbauer et al.; the server's `--watermark-gamma`
    /// and `--watermark-delta`).
    #[serde(default, deserialize_with = "null_as_default")]
    #[schema(default = false)]
    pub watermark: bool,
    /// Return finish reason, tokens with logprobs and the seed.
    #[serde(default, deserialize_with = "null_as_default")]
    #[schema(default = false)]
    pub details: bool,
    /// Also return the prompt tokens with their logprobs (`details.prefill`).
    #[serde(default, deserialize_with = "null_as_default")]
    #[schema(default = false)]
    pub decoder_input_details: bool,
    /// Random seed of sampling; drawn by the server when absent.
    #[schema(nullable, example = json!(null), minimum = 0)]
    pub seed: Option<u64>,
    /// Return this many most likely alternatives with each token.
    #[schema(nullable, example = 5, minimum = 0)]
    pub top_n_tokens: Option<u32>,
    /// Structured output: the generated text follows this JSON schema or regex.
    #[schema(nullable)]
    pub grammar: Option<crate::api::grammar::GrammarSpec>,
    /// LoRA adapter to generate with: one of the names `--lora-adapters` loaded (`/info`'s
    /// `lora_adapters`). Null, empty or the base model's id: the base model.
    #[schema(nullable)]
    pub adapter_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub struct GenerateRequest {
    #[schema(example = "My name is Olivier and I")]
    pub inputs: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub parameters: GenerateParameters,
}

/// Body of `POST /`, the route TGI's clients use: `/generate` or `/generate_stream` by `stream`.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub struct CompatGenerateRequest {
    #[schema(example = "My name is Olivier and I")]
    pub inputs: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub parameters: GenerateParameters,
    #[serde(default, deserialize_with = "null_as_default")]
    #[schema(default = false)]
    pub stream: bool,
}

impl From<CompatGenerateRequest> for GenerateRequest {
    fn from(request: CompatGenerateRequest) -> Self {
        Self {
            inputs: request.inputs,
            parameters: request.parameters,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nulls_and_missing_fields_mean_defaults() {
        let request: GenerateRequest = serde_json::from_str(
            r#"{"inputs": "x", "parameters": {"stop": null, "details": null, "seed": null,
                "do_sample": null, "adapter_id": null, "unknown_field": 3}}"#,
        )
        .expect("valid body");
        assert_eq!(request.parameters, GenerateParameters::default());
        let bare: GenerateRequest = serde_json::from_str(r#"{"inputs": "x"}"#).expect("valid");
        assert_eq!(bare.parameters, GenerateParameters::default());
    }

    #[test]
    fn client_shaped_body_parses() {
        // What `text-generation`'s Client.generate posts.
        let request: CompatGenerateRequest = serde_json::from_str(
            r#"{"inputs": "Hi", "stream": false, "parameters": {"best_of": null,
                "decoder_input_details": true, "details": true, "do_sample": false,
                "max_new_tokens": 20, "repetition_penalty": null, "frequency_penalty": null,
                "return_full_text": false, "seed": null, "stop": ["\n"], "temperature": 0.5,
                "top_k": null, "top_p": null, "truncate": null, "typical_p": null,
                "watermark": false, "top_n_tokens": null, "grammar": null}}"#,
        )
        .expect("valid body");
        assert_eq!(request.parameters.max_new_tokens, Some(20));
        assert_eq!(request.parameters.stop, vec!["\n".to_string()]);
        assert!(request.parameters.details && request.parameters.decoder_input_details);
        assert_eq!(request.parameters.temperature, Some(0.5));
    }
}
