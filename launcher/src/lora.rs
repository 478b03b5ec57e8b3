//! `--lora-adapters`: LoRA adapters the shards load beside the base model, as TGI spells them:
//! `name=SOURCE` (SOURCE a PEFT adapter directory or a hub id) or a hub id alone (named after
//! itself). The launcher only checks what needs no Python (names, paths that do not exist);
//! the shards resolve hub ids, read the adapters and refuse bad ones, naming them.

use std::path::Path;

use crate::model::looks_like_path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSpec {
    pub name: String,
    /// A directory or a hub id.
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoraFlagError {
    #[error("--lora-adapters: empty entry in {0:?}")]
    Empty(String),
    #[error("--lora-adapters: adapter {0:?} has an empty name or source")]
    EmptyPart(String),
    #[error("--lora-adapters: two adapters are named {0:?}")]
    Duplicate(String),
    #[error("--lora-adapters: adapter {name:?}: {path}: no such file or directory")]
    MissingPath { name: String, path: String },
    #[error("--max-lora-rank must be at least 1, got 0")]
    ZeroRank,
}

/// The adapters of `--lora-adapters` (already split at commas), checked.
pub fn parse_adapters(entries: &[String]) -> Result<Vec<AdapterSpec>, LoraFlagError> {
    let mut adapters: Vec<AdapterSpec> = Vec::new();
    for entry in entries {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(LoraFlagError::Empty(entries.join(",")));
        }
        let (name, source) = entry.split_once('=').unwrap_or((entry, entry));
        let (name, source) = (name.trim(), source.trim());
        if name.is_empty() || source.is_empty() {
            return Err(LoraFlagError::EmptyPart(entry.to_string()));
        }
        if adapters.iter().any(|adapter| adapter.name == name) {
            return Err(LoraFlagError::Duplicate(name.to_string()));
        }
        if looks_like_path(source) && !source.starts_with('~') && !Path::new(source).exists() {
            return Err(LoraFlagError::MissingPath {
                name: name.to_string(),
                path: source.to_string(),
            });
        }
        adapters.push(AdapterSpec {
            name: name.to_string(),
            source: source.to_string(),
        });
    }
    Ok(adapters)
}

/// The shards' `--lora-adapters` value: every adapter as `name=source`.
pub fn shard_flag_value(adapters: &[AdapterSpec]) -> Option<String> {
    if adapters.is_empty() {
        return None;
    }
    let entries: Vec<String> = adapters
        .iter()
        .map(|adapter| format!("{}={}", adapter.name, adapter.source))
        .collect();
    Some(entries.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(entries: &[&str]) -> Result<Vec<AdapterSpec>, LoraFlagError> {
        let entries: Vec<String> = entries.iter().map(|entry| entry.to_string()).collect();
        parse_adapters(&entries)
    }

    #[test]
    fn names_and_sources_are_read_as_tgi_writes_them() {
        let dir = std::env::temp_dir();
        let dir = dir.display().to_string();
        let adapters = parse(&["org/support", &format!("local={dir}")]).expect("valid");
        assert_eq!(adapters[0].name, "org/support");
        assert_eq!(adapters[0].source, "org/support");
        assert_eq!(adapters[1].name, "local");
        assert_eq!(
            shard_flag_value(&adapters).as_deref(),
            Some(format!("org/support=org/support,local={dir}").as_str())
        );
        assert_eq!(shard_flag_value(&[]), None);
    }

    #[test]
    fn bad_entries_are_refused_naming_the_adapter() {
        let missing = parse(&["math=/nonexistent/ferrite-adapter"]).expect_err("missing");
        let message = missing.to_string();
        assert!(message.contains("\"math\"") && message.contains("/nonexistent/ferrite-adapter"));
        assert_eq!(
            parse(&["a=x/y", "a=z/w"]),
            Err(LoraFlagError::Duplicate("a".into()))
        );
        assert!(matches!(parse(&["=x/y"]), Err(LoraFlagError::EmptyPart(_))));
        assert!(matches!(parse(&[""]), Err(LoraFlagError::Empty(_))));
    }
}
