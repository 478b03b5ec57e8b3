//! Stream chunk shaping without HTTP: updates in, chunks out.

use super::*;
use crate::generation::{FinishReason, TextToken, TokenStep};
use crate::openai::chat::ChatShaper;
use crate::openai::choices::{ChoiceUpdate, PreparedPrompt};
use crate::openai::completions::CompletionShaper;
use crate::openai::parameters::GenerationOptions;
use crate::openai::response::{Header, Usage};
use crate::openai::run::ChunkShaper;
use crate::testing::tiny_tokenizer::{ids_of, special_id};

fn header(object: &'static str) -> Header {
    Header {
        id: "id-1".into(),
        object,
        created: 7,
        model: "tiny".into(),
        system_fingerprint: "fp".into(),
    }
}

fn update(
    tokenizer: &TextTokenizer,
    index: u32,
    id: u32,
    text: &str,
    finish: Option<FinishReason>,
) -> ChoiceUpdate {
    let token = TextToken {
        id,
        text: text.into(),
        logprob: -0.25,
        special: tokenizer.is_special(id),
    };
    let top = TextToken {
        id,
        text: tokenizer.token_text(id),
        logprob: -0.25,
        special: token.special,
    };
    ChoiceUpdate {
        index,
        text: text.into(),
        step: TokenStep {
            index: 0,
            token,
            top_tokens: vec![top],
            finish,
        },
    }
}

fn to_json<T: serde::Serialize>(chunks: &[T]) -> Vec<Value> {
    chunks
        .iter()
        .map(|chunk| serde_json::to_value(chunk).expect("json"))
        .collect()
}

#[test]
fn chat_chunks_role_first_then_content_then_finish() {
    let tokenizer = Arc::new(byte_level_tokenizer());
    let mut shaper = ChatShaper {
        header: header("chat.completion.chunk"),
        tokenizer: Arc::clone(&tokenizer),
        with_logprobs: false,
        include_usage: true,
        started: vec![false; 2],
        tool_streams: None,
    };
    let hello = ids_of(&tokenizer, "Hello")[0];
    let eos = special_id(&tokenizer, EOS);
    let first = to_json(&shaper.chunks(&update(&tokenizer, 1, hello, "Hello", None), &[]));
    assert_eq!(
        first,
        [
            json!({"id": "id-1", "object": "chat.completion.chunk", "created": 7, "model": "tiny",
                   "system_fingerprint": "fp", "usage": null, "choices": [{"index": 1,
                   "delta": {"role": "assistant", "content": "", "tool_calls": null},
                   "logprobs": null, "finish_reason": null}]}),
            json!({"id": "id-1", "object": "chat.completion.chunk", "created": 7, "model": "tiny",
                   "system_fingerprint": "fp", "usage": null, "choices": [{"index": 1,
                   "delta": {"role": "assistant", "content": "Hello", "tool_calls": null},
                   "logprobs": null, "finish_reason": null}]}),
        ]
    );
    // Held-back text gives no chunk; the end gives a finish chunk with no content.
    assert!(shaper
        .chunks(&update(&tokenizer, 1, hello, "", None), &[])
        .is_empty());
    let last = to_json(&shaper.chunks(
        &update(
            &tokenizer,
            1,
            eos,
            "",
            Some(FinishReason::EndOfSequenceToken),
        ),
        &[],
    ));
    assert_eq!(last.len(), 1);
    assert_eq!(
        last[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": null, "tool_calls": null})
    );
    assert_eq!(last[0]["choices"][0]["finish_reason"], "stop");
    let usage = serde_json::to_value(shaper.usage_chunk(Usage::new(3, 4))).expect("json");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
    );
}

#[test]
fn chat_chunks_carry_logprobs_and_omit_usage_unless_asked() {
    let tokenizer = Arc::new(byte_level_tokenizer());
    let mut shaper = ChatShaper {
        header: header("chat.completion.chunk"),
        tokenizer: Arc::clone(&tokenizer),
        with_logprobs: true,
        include_usage: false,
        started: vec![true],
        tool_streams: None,
    };
    let world = ids_of(&tokenizer, " world")[0];
    let chunks = to_json(&shaper.chunks(
        &update(&tokenizer, 0, world, " world", Some(FinishReason::Length)),
        &[],
    ));
    assert_eq!(chunks.len(), 2, "content, then finish");
    assert!(chunks.iter().all(|chunk| chunk.get("usage").is_none()));
    let entry = &chunks[0]["choices"][0]["logprobs"]["content"][0];
    assert_eq!(entry["token"], " world");
    assert_eq!(entry["top_logprobs"][0]["token"], " world");
    assert_eq!(chunks[1]["choices"][0]["finish_reason"], "length");
}

#[test]
fn completion_chunks_echo_the_prompt_once_per_choice() {
    let tokenizer = Arc::new(byte_level_tokenizer());
    let prompt = PreparedPrompt {
        input_ids: ids_of(&tokenizer, "Hi"),
        text: "Hi".into(),
        max_new_tokens: 4,
    };
    let options = GenerationOptions {
        sampling: Default::default(),
        n: 2,
        max_tokens: Some(4),
        stop_sequences: Vec::new(),
        logprobs: None,
        prompt_logprobs: false,
        stream: true,
        include_usage: false,
        adapter_id: String::new(),
    };
    let mut shaper = CompletionShaper::new(
        header("text_completion"),
        Arc::clone(&tokenizer),
        &[prompt],
        &options,
        true,
    );
    let world = ids_of(&tokenizer, " world")[0];
    let texts = |chunks: Vec<Value>| -> Vec<(u64, String)> {
        chunks
            .iter()
            .map(|chunk| {
                let choice = &chunk["choices"][0];
                (
                    choice["index"].as_u64().expect("index"),
                    choice["text"].as_str().expect("text").to_string(),
                )
            })
            .collect()
    };
    let first = to_json(&shaper.chunks(&update(&tokenizer, 1, world, " world", None), &[]));
    assert_eq!(
        texts(first),
        [(1, "Hi".to_string()), (1, " world".to_string())]
    );
    let again = to_json(&shaper.chunks(
        &update(&tokenizer, 1, world, " world", Some(FinishReason::Length)),
        &[],
    ));
    assert_eq!(again[1]["choices"][0]["finish_reason"], "length");
    assert_eq!(
        texts(again),
        [(1, " world".to_string()), (1, String::new())]
    );
    let other = to_json(&shaper.chunks(&update(&tokenizer, 0, world, " world", None), &[]));
    assert_eq!(
        texts(other)[0],
        (0, "Hi".to_string()),
        "each choice echoes its prompt"
    );
}
