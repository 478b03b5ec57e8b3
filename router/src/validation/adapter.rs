//! Which LoRA adapter a request runs with: TGI's `parameters.adapter_id`, or OpenAI's `model`
//! naming an adapter. The names come from the shard's Info (`--lora-adapters`); the base model
//! is asked for by leaving the field out, empty, or by its own id.

use super::error::ValidationError;

/// The model name OpenAI clients of TGI send by default; always the base model.
const TGI_DEFAULT_MODEL: &str = "tgi";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Adapters {
    /// The served model's id (`/info`'s `model_id`): naming it asks for the base model.
    base_model_id: String,
    /// Adapter names, in the shard's order.
    names: Vec<String>,
}

impl Adapters {
    pub fn new(base_model_id: &str, names: &[String]) -> Self {
        Self {
            base_model_id: base_model_id.to_string(),
            names: names.to_vec(),
        }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// TGI's `adapter_id`: the adapter to send the shard ("" for the base model).
    pub fn resolve(&self, requested: Option<&str>) -> Result<String, ValidationError> {
        match requested {
            None | Some("") => Ok(String::new()),
            Some(name) if name == self.base_model_id => Ok(String::new()),
            Some(name) if self.names.iter().any(|known| known == name) => Ok(name.to_string()),
            Some(name) => Err(self.unknown(name)),
        }
    }

    /// OpenAI's `model`. Without adapters any name means the base model (OpenAI clients
    /// must send one, and ferrite serves one model); with adapters a name that is neither an
    /// adapter nor the base model is refused, so a typo never silently gets the base model.
    pub fn resolve_model(&self, model: Option<&str>) -> Result<String, ValidationError> {
        match model {
            _ if self.names.is_empty() => Ok(String::new()),
            Some(TGI_DEFAULT_MODEL) => Ok(String::new()),
            model => self.resolve(model),
        }
    }

    fn unknown(&self, name: &str) -> ValidationError {
        let known = if self.names.is_empty() {
            "none (start with --lora-adapters to serve some)".to_string()
        } else {
            self.names
                .iter()
                .map(|known| format!("`{known}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        ValidationError::UnknownAdapter {
            given: name.to_string(),
            known,
            base_model_id: self.base_model_id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapters() -> Adapters {
        Adapters::new("base", &["math".to_string(), "code".to_string()])
    }

    #[test]
    fn adapter_ids_resolve_to_adapters_or_the_base_model() {
        let adapters = adapters();
        assert_eq!(adapters.resolve(None), Ok(String::new()));
        assert_eq!(adapters.resolve(Some("")), Ok(String::new()));
        assert_eq!(adapters.resolve(Some("base")), Ok(String::new()));
        assert_eq!(adapters.resolve(Some("code")), Ok("code".to_string()));
        let error = adapters.resolve(Some("cod")).expect_err("unknown");
        let message = error.to_string();
        for part in ["`cod`", "`math`, `code`", "`base`"] {
            assert!(message.contains(part), "{message}");
        }
        let none = Adapters::new("base", &[]).resolve(Some("math"));
        assert!(none
            .expect_err("no adapters")
            .to_string()
            .contains("--lora-adapters"));
    }

    #[test]
    fn openai_model_names_pick_adapters_only_when_there_are_some() {
        let adapters = adapters();
        assert_eq!(adapters.resolve_model(Some("math")), Ok("math".to_string()));
        assert_eq!(adapters.resolve_model(Some("tgi")), Ok(String::new()));
        assert_eq!(adapters.resolve_model(Some("base")), Ok(String::new()));
        assert!(adapters.resolve_model(Some("gpt-4o")).is_err());
        let without = Adapters::new("base", &[]);
        assert_eq!(without.resolve_model(Some("gpt-4o")), Ok(String::new()));
    }
}
