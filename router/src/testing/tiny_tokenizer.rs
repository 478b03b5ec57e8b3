//! Two small but real tokenizers built in code, in the two shapes models ship:
//! - byte-level BPE (GPT-2 / SmolLM / Llama 3 / Qwen): every byte is a token, a few merges;
//! - SentencePiece-style BPE with byte fallback (Llama 2 / Mistral): `▁` for spaces, unknown
//!   characters as `<0xNN>` byte tokens, a decoder that strips the leading space.
//!
//! Both add `<s>` in front through their post-processor and know `</s>` as a special token.

use serde_json::{json, Map, Value};
use tokenizers::Tokenizer;

use crate::tokenizer::TextTokenizer;

/// Words that get merged into single tokens (so tests see multi-character tokens too).
const BYTE_LEVEL_WORDS: [&str; 5] = ["Hello", "Ġworld", "Ġthe", "Hi", "ab"];
const BYTE_FALLBACK_WORDS: [&str; 4] = ["▁Hello", "▁world", "▁the", "▁Hi"];

pub const BOS: &str = "<s>";
pub const EOS: &str = "</s>";

/// GPT-2's reversible byte -> printable character table, in byte order.
fn byte_level_chars() -> Vec<char> {
    let printable = |byte: u32| {
        (u32::from('!')..=u32::from('~')).contains(&byte)
            || (0xA1..=0xAC).contains(&byte)
            || (0xAE..=0xFF).contains(&byte)
    };
    let mut next_unused = 256;
    (0u32..256)
        .map(|byte| {
            let code = if printable(byte) {
                byte
            } else {
                next_unused += 1;
                next_unused - 1
            };
            char::from_u32(code).expect("valid code point")
        })
        .collect()
}

/// Merges that build each word left to right, adding every intermediate piece to the vocab.
fn add_word_merges(words: &[&str], vocab: &mut Map<String, Value>, merges: &mut Vec<Value>) {
    for word in words {
        let chars: Vec<char> = word.chars().collect();
        let mut left: String = chars[0].to_string();
        for &next in &chars[1..] {
            merges.push(json!(format!("{left} {next}")));
            left.push(next);
            let next_id = vocab.len();
            vocab.entry(left.clone()).or_insert(json!(next_id));
        }
    }
}

fn special(id: usize, content: &str) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false,
           "rstrip": false, "normalized": false, "special": true})
}

fn bos_template(bos_id: usize) -> Value {
    json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {BOS: {"id": BOS, "ids": [bos_id], "tokens": [BOS]}}
    })
}

fn bpe_model(vocab: Map<String, Value>, merges: Vec<Value>, byte_fallback: bool) -> Value {
    json!({
        "type": "BPE", "dropout": null,
        "unk_token": if byte_fallback { json!("<unk>") } else { Value::Null },
        "continuing_subword_prefix": null, "end_of_word_suffix": null,
        "fuse_unk": byte_fallback, "byte_fallback": byte_fallback, "ignore_merges": false,
        "vocab": vocab, "merges": merges
    })
}

fn build(document: Value) -> TextTokenizer {
    let tokenizer: Tokenizer = document
        .to_string()
        .parse()
        .expect("the hand-made tokenizer.json must load");
    TextTokenizer::new(tokenizer)
}

/// The byte-level tokenizer as a `tokenizer.json` document.
pub fn byte_level_document() -> Value {
    let mut vocab = Map::new();
    for (id, symbol) in byte_level_chars().into_iter().enumerate() {
        vocab.insert(symbol.to_string(), json!(id));
    }
    let (bos_id, eos_id) = (256, 257);
    vocab.insert(BOS.into(), json!(bos_id));
    vocab.insert(EOS.into(), json!(eos_id));
    let mut merges = Vec::new();
    add_word_merges(&BYTE_LEVEL_WORDS, &mut vocab, &mut merges);
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(bos_id, BOS), special(eos_id, EOS)],
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": bos_template(bos_id),
        "decoder": byte_level,
        "model": bpe_model(vocab, merges, false)
    })
}

pub fn byte_level_tokenizer() -> TextTokenizer {
    build(byte_level_document())
}

pub fn byte_fallback_tokenizer() -> TextTokenizer {
    let mut vocab = Map::new();
    for (id, content) in ["<unk>", BOS, EOS].into_iter().enumerate() {
        vocab.insert(content.into(), json!(id));
    }
    for byte in 0..=255u8 {
        let next_id = vocab.len();
        vocab.insert(format!("<0x{byte:02X}>"), json!(next_id));
    }
    // ASCII letters, digits and a little punctuation; anything else falls back to bytes.
    let symbols = ('a'..='z')
        .chain('A'..='Z')
        .chain('0'..='9')
        .chain("▁.,!?'".chars());
    for symbol in symbols {
        let next_id = vocab.len();
        vocab.insert(symbol.to_string(), json!(next_id));
    }
    let mut merges = Vec::new();
    add_word_merges(&BYTE_FALLBACK_WORDS, &mut vocab, &mut merges);
    build(json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, BOS), special(2, EOS)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": null,
        "post_processor": bos_template(1),
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": bpe_model(vocab, merges, true)
    }))
}

/// Id of a special token of the tiny tokenizers.
pub fn special_id(tokenizer: &TextTokenizer, content: &str) -> u32 {
    tokenizer
        .inner()
        .token_to_id(content)
        .expect("special token in vocab")
}

/// Token ids of `text` without the BOS the post-processor adds.
pub fn ids_of(tokenizer: &TextTokenizer, text: &str) -> Vec<u32> {
    tokenizer
        .inner()
        .encode(text, false)
        .expect("encode")
        .get_ids()
        .to_vec()
}
