//! Token logprobs in OpenAI's two layouts: chat (`logprobs.content[]`, one object per token
//! with its `top_logprobs`) and completions (parallel lists with text offsets). Each token is
//! decoded on its own, as OpenAI and TGI show them. Special tokens (the closing EOS) are not
//! part of the content and get no entry.

use crate::generation::TokenStep;
use crate::tokenizer::TextTokenizer;

use super::response::{Alternatives, CompletionLogprobs, TokenLogprob, TopLogprob};

/// The chat entry of one generated token; None for a special token.
pub fn chat_entry(tokenizer: &TextTokenizer, step: &TokenStep) -> Option<TokenLogprob> {
    if step.token.special {
        return None;
    }
    let token = tokenizer.token_text(step.token.id);
    let top_logprobs = step
        .top_tokens
        .iter()
        .map(|top| TopLogprob {
            bytes: top.text.as_bytes().to_vec(),
            token: top.text.clone(),
            logprob: top.logprob,
        })
        .collect();
    Some(TokenLogprob {
        bytes: token.as_bytes().to_vec(),
        token,
        logprob: step.token.logprob,
        top_logprobs,
    })
}

/// Builds completions logprobs token by token, tracking each token's character offset in the
/// choice's text (which starts with the prompt when it is echoed).
#[derive(Debug, Clone, Default)]
pub struct CompletionLogprobsBuilder {
    text_offset_chars: usize,
}

impl CompletionLogprobsBuilder {
    /// Entries for the echoed prompt: the first token has no logprob (null), the others carry
    /// their own logprob as their only alternative (the shard returns no prompt alternatives).
    pub fn prompt(
        &mut self,
        tokenizer: &TextTokenizer,
        input_ids: &[u32],
        logprobs: &[f32],
    ) -> CompletionLogprobs {
        let mut out = CompletionLogprobs::default();
        for (position, &id) in input_ids.iter().enumerate() {
            let token = tokenizer.token_text(id);
            let logprob = logprobs
                .get(position)
                .copied()
                .filter(|logprob| !logprob.is_nan());
            out.top_logprobs
                .push(logprob.map(|logprob| Alternatives(vec![(token.clone(), logprob)])));
            out.token_logprobs.push(logprob);
            self.push_token(&mut out, token);
        }
        out
    }

    /// The entry of one generated token (empty for a special token).
    pub fn generated(&mut self, tokenizer: &TextTokenizer, step: &TokenStep) -> CompletionLogprobs {
        let mut out = CompletionLogprobs::default();
        if step.token.special {
            return out;
        }
        let alternatives = step
            .top_tokens
            .iter()
            .map(|top| (top.text.clone(), top.logprob))
            .collect();
        out.top_logprobs.push(Some(Alternatives(alternatives)));
        out.token_logprobs.push(Some(step.token.logprob));
        self.push_token(&mut out, tokenizer.token_text(step.token.id));
        out
    }

    fn push_token(&mut self, out: &mut CompletionLogprobs, token: String) {
        out.text_offset.push(self.text_offset_chars);
        self.text_offset_chars += token.chars().count();
        out.tokens.push(token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::{FinishReason, TextToken};
    use crate::testing::tiny_tokenizer::{byte_level_tokenizer, ids_of, special_id, EOS};

    fn step(tokenizer: &TextTokenizer, id: u32, top_ids: &[u32]) -> TokenStep {
        let text_token = |id: u32, logprob: f32| TextToken {
            id,
            text: tokenizer.token_text(id),
            logprob,
            special: tokenizer.is_special(id),
        };
        TokenStep {
            index: 0,
            token: text_token(id, -0.5),
            top_tokens: top_ids
                .iter()
                .enumerate()
                .map(|(rank, &top)| text_token(top, -0.5 - rank as f32))
                .collect(),
            finish: None,
        }
    }

    #[test]
    fn chat_entries_carry_text_bytes_and_alternatives() {
        let tokenizer = byte_level_tokenizer();
        let ids = ids_of(&tokenizer, "Hello world");
        let entry = chat_entry(&tokenizer, &step(&tokenizer, ids[1], &[ids[1], ids[0], 66]))
            .expect("not special");
        assert_eq!(entry.token, " world");
        assert_eq!(entry.bytes, b" world".to_vec());
        assert_eq!(entry.logprob, -0.5);
        let tops: Vec<(&str, f32)> = entry
            .top_logprobs
            .iter()
            .map(|top| (top.token.as_str(), top.logprob))
            .collect();
        assert_eq!(tops, [(" world", -0.5), ("Hello", -1.5), ("B", -2.5)]);
        let mut eos = step(&tokenizer, special_id(&tokenizer, EOS), &[]);
        eos.finish = Some(FinishReason::EndOfSequenceToken);
        assert_eq!(chat_entry(&tokenizer, &eos), None);
    }

    #[test]
    fn completion_entries_track_offsets_through_the_echoed_prompt() {
        let tokenizer = byte_level_tokenizer();
        let prompt_ids = ids_of(&tokenizer, "Hi ab");
        let mut builder = CompletionLogprobsBuilder::default();
        let prompt_logprobs = vec![f32::NAN, -1.0, -2.0];
        let mut logprobs = builder.prompt(&tokenizer, &prompt_ids, &prompt_logprobs);
        assert_eq!(logprobs.tokens, ["Hi", " ", "ab"]);
        assert_eq!(logprobs.token_logprobs, [None, Some(-1.0), Some(-2.0)]);
        assert_eq!(logprobs.top_logprobs[0], None);
        assert_eq!(
            logprobs.top_logprobs[2],
            Some(Alternatives(vec![("ab".into(), -2.0)]))
        );
        let world = ids_of(&tokenizer, " world")[0];
        logprobs.extend(builder.generated(&tokenizer, &step(&tokenizer, world, &[world, 66])));
        assert_eq!(logprobs.tokens, ["Hi", " ", "ab", " world"]);
        assert_eq!(logprobs.text_offset, [0, 2, 3, 5]);
        assert_eq!(
            logprobs.top_logprobs[3],
            Some(Alternatives(vec![
                (" world".into(), -0.5),
                ("B".into(), -1.5)
            ]))
        );
        let json = serde_json::to_value(&logprobs.top_logprobs[3]).expect("json");
        assert_eq!(json, serde_json::json!({" world": -0.5, "B": -1.5}));
    }
}
