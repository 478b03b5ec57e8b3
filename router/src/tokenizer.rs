//! Text <-> token ids, done once, in the router (DESIGN.md pain point 6: the shard never
//! tokenizes). Wraps a `tokenizers::Tokenizer` loaded from the model's `tokenizer.json` and
//! remembers which ids are special tokens (they are streamed with `special: true` and kept out
//! of `generated_text`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use tokenizers::{Encoding, Tokenizer, TruncationDirection};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot load the tokenizer from {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("{0}")]
    Encode(String),
    #[error("{0}")]
    Decode(String),
}

pub struct TextTokenizer {
    tokenizer: Tokenizer,
    special_ids: HashSet<u32>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.tokenizer.get_vocab_size(true))
            .field("num_special_ids", &self.special_ids.len())
            .finish()
    }
}

impl TextTokenizer {
    /// Loads `<dir>/tokenizer.json` (the other files of the directory, tokenizer_config.json
    /// and generation_config.json, matter for chat templates and the shard's EOS ids).
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&path).map_err(|error| TokenizerError::Load {
            path,
            reason: error.to_string(),
        })?;
        Ok(Self::new(tokenizer))
    }

    pub fn new(tokenizer: Tokenizer) -> Self {
        let special_ids = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| id)
            .collect();
        Self {
            tokenizer,
            special_ids,
        }
    }

    /// Encodes with the special tokens the tokenizer's post-processor adds (e.g. a BOS). With
    /// `truncate`, only the last `truncate` tokens are kept (TGI truncates on the left).
    pub fn encode(&self, text: &str, truncate: Option<usize>) -> Result<Encoding, TokenizerError> {
        let mut encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|error| TokenizerError::Encode(error.to_string()))?;
        if let Some(max_tokens) = truncate {
            if encoding.len() > max_tokens {
                encoding.truncate(max_tokens, 0, TruncationDirection::Left);
            }
        }
        Ok(encoding)
    }

    /// Decodes ids as they are (special tokens included, no skipping).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|error| TokenizerError::Decode(error.to_string()))
    }

    /// Text of a single token on its own: a special token's content, otherwise the token
    /// decoded alone (may be U+FFFD for a lone byte of a multi-byte character). Used for top
    /// tokens and prompt tokens, which TGI also decodes one by one.
    pub fn token_text(&self, id: u32) -> String {
        if self.is_special(id) {
            if let Some(content) = self.tokenizer.id_to_token(id) {
                return content;
            }
        }
        self.decode(&[id]).unwrap_or_default()
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }
}
