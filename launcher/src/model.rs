//! What the launcher needs to know about the model before starting processes: whether a
//! `--model-id` that names a path exists, and a few numbers from the prepared config.json.

use std::path::Path;

use serde::Deserialize;

/// The config.json numbers the launch plan checks flags against. Absent keys stay `None`
/// (the plan then skips that check; the shard is the authority on its model).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ModelFacts {
    pub max_position_embeddings: Option<u32>,
    pub num_attention_heads: Option<u32>,
    pub num_key_value_heads: Option<u32>,
    pub intermediate_size: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("--model-id {0}: no such file or directory")]
    MissingPath(String),
    #[error("prepared model directory {dir} has no readable config.json: {reason}")]
    BadConfig { dir: String, reason: String },
}

/// Reads the plan-relevant numbers from `<model_dir>/config.json`. Multimodal configs keep the
/// language model's numbers under `text_config`, which is used when present.
pub fn read_model_facts(model_dir: &Path) -> Result<ModelFacts, ModelError> {
    let bad = |reason: String| ModelError::BadConfig {
        dir: model_dir.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(model_dir.join("config.json"))
        .map_err(|error| bad(error.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|error| bad(error.to_string()))?;
    let language_config = value.get("text_config").unwrap_or(&value);
    serde_json::from_value(language_config.clone()).map_err(|error| bad(error.to_string()))
}

/// Whether `model_id` is meant as a filesystem path rather than a hub id ("org/name"): it
/// exists, or it is written the way only paths are (absolute, ./, ../, ~, several slashes).
pub fn looks_like_path(model_id: &str) -> bool {
    Path::new(model_id).exists()
        || model_id.starts_with('/')
        || model_id.starts_with("./")
        || model_id.starts_with("../")
        || model_id.starts_with('~')
        || model_id == "."
        || model_id == ".."
        || model_id.matches('/').count() > 1
}

/// Fails at once, naming the path, when `--model-id` is a path that does not exist, so the user
/// does not wait for Python to start to learn about a typo.
pub fn check_model_id(model_id: Option<&str>) -> Result<(), ModelError> {
    match model_id {
        Some(id) if looks_like_path(id) && !Path::new(id).exists() && !id.starts_with('~') => {
            Err(ModelError::MissingPath(id.to_string()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_hub_ids_are_told_apart() {
        assert!(looks_like_path("/models/llama"));
        assert!(looks_like_path("./llama"));
        assert!(looks_like_path("a/b/c"));
        assert!(!looks_like_path("HuggingFaceTB/SmolLM2-135M-Instruct"));
        assert!(!looks_like_path("gpt2"));
    }

    #[test]
    fn a_missing_path_is_refused_with_its_name() {
        let error = check_model_id(Some("/nonexistent/ferrite-model")).expect_err("missing");
        assert!(error.to_string().contains("/nonexistent/ferrite-model"));
        assert!(check_model_id(Some("org/name")).is_ok());
        assert!(check_model_id(None).is_ok());
    }

    #[test]
    fn facts_come_from_config_json_and_its_text_config() {
        let dir = std::env::temp_dir().join(format!("ferrite-facts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(
            dir.join("config.json"),
            r#"{"text_config": {"max_position_embeddings": 2048, "num_attention_heads": 8}}"#,
        )
        .expect("write config");
        let facts = read_model_facts(&dir).expect("readable");
        assert_eq!(facts.max_position_embeddings, Some(2048));
        assert_eq!(facts.num_attention_heads, Some(8));
        assert_eq!(facts.num_key_value_heads, None);
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert!(matches!(
            read_model_facts(&dir),
            Err(ModelError::BadConfig { .. })
        ));
    }
}
