//! Incremental detokenization that never emits part of a character.
//!
//! Decoding one token at a time is wrong in two ways: a character may span several tokens
//! (an emoji split over byte-fallback / byte-level tokens decodes to U+FFFD until its last
//! byte arrives), and many decoders treat the start of a string specially (SentencePiece strips
//! the leading space). So we decode a small window twice — `ids[prefix..read]` (text already
//! emitted) and `ids[prefix..]` — and emit only the difference, and only once it no longer ends
//! in U+FFFD. The window is seeded with the last prompt tokens so the first generated token
//! gets its leading space right.

use crate::tokenizer::{TextTokenizer, TokenizerError};

/// Prompt tokens kept as left context for the first generated tokens.
const PROMPT_CONTEXT_TOKENS: usize = 5;
const REPLACEMENT_CHAR: char = '\u{FFFD}';

#[derive(Debug, Clone)]
pub struct IncrementalDetokenizer {
    /// The window: ids from `prefix_offset` onwards of the sequence (older ids are dropped).
    ids: Vec<u32>,
    /// Start of the text already emitted within `ids`, used as left context.
    prefix_offset: usize,
    /// End of the ids whose text has been emitted.
    read_offset: usize,
}

impl IncrementalDetokenizer {
    /// `prompt_ids` are the request's input ids; only the last few are kept as context. Special
    /// tokens are left out: they are never part of the decoded text.
    pub fn new(tokenizer: &TextTokenizer, prompt_ids: &[u32]) -> Self {
        let context: Vec<u32> = prompt_ids
            .iter()
            .copied()
            .filter(|&id| !tokenizer.is_special(id))
            .collect();
        let start = context.len().saturating_sub(PROMPT_CONTEXT_TOKENS);
        let ids = context[start..].to_vec();
        let read_offset = ids.len();
        Self {
            ids,
            prefix_offset: 0,
            read_offset,
        }
    }

    /// Adds a (non-special) generated token; returns the text it completes, possibly empty
    /// while a multi-byte character is still incomplete.
    pub fn push(&mut self, tokenizer: &TextTokenizer, id: u32) -> Result<String, TokenizerError> {
        self.ids.push(id);
        let prefix_text = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full_text = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        if full_text.len() <= prefix_text.len() || full_text.ends_with(REPLACEMENT_CHAR) {
            return Ok(String::new());
        }
        let delta = text_after(&full_text, &prefix_text);
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        self.compact();
        Ok(delta)
    }

    /// Text still held back at the end of a generation (an incomplete character decodes to
    /// U+FFFD here rather than being lost).
    pub fn flush(&mut self, tokenizer: &TextTokenizer) -> Result<String, TokenizerError> {
        if self.read_offset == self.ids.len() {
            return Ok(String::new());
        }
        let prefix_text = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full_text = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(text_after(&full_text, &prefix_text))
    }

    /// Drops ids left of the window so memory stays bounded on long generations.
    fn compact(&mut self) {
        if self.prefix_offset > 0 {
            self.ids.drain(..self.prefix_offset);
            self.read_offset -= self.prefix_offset;
            self.prefix_offset = 0;
        }
    }
}

/// `full` minus its leading `prefix`. Decoders normally keep the prefix verbatim; when one does
/// not (clean-up rules), fall back to skipping as many characters as the prefix has.
fn text_after(full: &str, prefix: &str) -> String {
    match full.strip_prefix(prefix) {
        Some(rest) => rest.to_string(),
        None => full.chars().skip(prefix.chars().count()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_tokenizer::{byte_fallback_tokenizer, byte_level_tokenizer, ids_of};

    /// Feeds `ids` one at a time and returns every emitted piece plus the flushed rest.
    fn stream(tokenizer: &TextTokenizer, prompt: &[u32], ids: &[u32]) -> Vec<String> {
        let mut detokenizer = IncrementalDetokenizer::new(tokenizer, prompt);
        let mut pieces: Vec<String> = ids
            .iter()
            .map(|&id| detokenizer.push(tokenizer, id).expect("decode"))
            .collect();
        pieces.push(detokenizer.flush(tokenizer).expect("flush"));
        pieces
    }

    /// Prompt ids as the router sends them (with the post-processor's `<s>`).
    fn encode(tokenizer: &TextTokenizer, text: &str) -> Vec<u32> {
        tokenizer
            .encode(text, None)
            .expect("encode")
            .get_ids()
            .to_vec()
    }

    #[test]
    fn emoji_split_over_byte_level_tokens_is_emitted_whole() {
        let tokenizer = byte_level_tokenizer();
        let prompt = encode(&tokenizer, "Hi");
        let ids = ids_of(&tokenizer, " 😀!");
        assert!(
            ids.len() >= 5,
            "the emoji must span several tokens, got {ids:?}"
        );
        let pieces = stream(&tokenizer, &prompt, &ids);
        for piece in &pieces {
            assert!(
                !piece.contains(REPLACEMENT_CHAR),
                "broken character emitted: {pieces:?}"
            );
        }
        assert_eq!(pieces.concat(), " 😀!");
        // The emoji's bytes are held back until its last byte, then emitted in one piece.
        assert!(pieces.iter().any(|piece| piece == "😀"), "{pieces:?}");
    }

    #[test]
    fn cjk_and_accents_are_never_split() {
        let tokenizer = byte_level_tokenizer();
        let text = " 日本語 café naïve Ωmega";
        let ids = ids_of(&tokenizer, text);
        let pieces = stream(&tokenizer, &encode(&tokenizer, "Hello"), &ids);
        assert!(
            pieces.iter().all(|piece| !piece.contains(REPLACEMENT_CHAR)),
            "{pieces:?}"
        );
        assert_eq!(pieces.concat(), text);
        assert!(pieces.contains(&"日".to_string()), "{pieces:?}");
    }

    #[test]
    fn byte_fallback_emoji_and_leading_space_survive() {
        // SentencePiece-style: `▁` marks spaces, the decoder strips the first one, bytes of
        // unknown characters come as <0xNN> tokens.
        let tokenizer = byte_fallback_tokenizer();
        let prompt = encode(&tokenizer, "Hello");
        let ids = ids_of(&tokenizer, "world 🦀é");
        let byte_tokens = ids
            .iter()
            .filter(|&&id| {
                tokenizer
                    .inner()
                    .id_to_token(id)
                    .is_some_and(|t| t.starts_with("<0x"))
            })
            .count();
        assert!(
            byte_tokens >= 4,
            "the crab must fall back to bytes: {ids:?}"
        );
        let pieces = stream(&tokenizer, &prompt, &ids);
        assert!(
            pieces.iter().all(|piece| !piece.contains(REPLACEMENT_CHAR)),
            "{pieces:?}"
        );
        // Decoding " world" alone would lose its space; the prompt context keeps it.
        assert_eq!(pieces.concat(), " world 🦀é");
        assert!(pieces.iter().any(|piece| piece == "🦀"), "{pieces:?}");
    }

    #[test]
    fn incomplete_character_at_the_end_is_flushed_not_lost() {
        let tokenizer = byte_level_tokenizer();
        let ids = ids_of(&tokenizer, "😀");
        let truncated = &ids[..ids.len() - 1];
        let pieces = stream(&tokenizer, &encode(&tokenizer, "a"), truncated);
        assert!(
            pieces[..pieces.len() - 1].iter().all(String::is_empty),
            "{pieces:?}"
        );
        assert!(pieces
            .last()
            .is_some_and(|rest| rest.contains(REPLACEMENT_CHAR)));
    }

    #[test]
    fn long_generations_keep_a_bounded_window() {
        let tokenizer = byte_level_tokenizer();
        let ids = ids_of(&tokenizer, &"ab ".repeat(200));
        let mut detokenizer = IncrementalDetokenizer::new(&tokenizer, &[]);
        let mut text = String::new();
        for &id in &ids {
            text.push_str(&detokenizer.push(&tokenizer, id).expect("decode"));
        }
        assert_eq!(text, "ab ".repeat(200));
        assert!(
            detokenizer.ids.len() <= 3,
            "window grew to {}",
            detokenizer.ids.len()
        );
    }
}
