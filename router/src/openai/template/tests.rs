//! Expected prompts were produced by transformers' own renderer
//! (`transformers.utils.chat_template_utils.render_jinja_template`) on the same templates.

use std::path::PathBuf;

use serde_json::json;

use super::*;

/// A Zephyr-style template in the way Hugging Face models write them: a system message taken
/// off the front, `.strip()`, role alternation enforced with `raise_exception`, block tags on
/// their own (indented) lines relying on trim_blocks / lstrip_blocks.
const ZEPHYR_STYLE: &str = r#"{{ bos_token }}
{% if messages[0]['role'] == 'system' %}
    {% set system_message = messages[0]['content'].strip() %}
    {% set turns = messages[1:] %}
{% else %}
    {% set system_message = none %}
    {% set turns = messages %}
{% endif %}
{% if system_message is not none %}
{{ '<|system|>\n' + system_message + eos_token }}
{% endif %}
{% for message in turns %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {% if message.role.startswith('user') %}
{{ '<|user|>\n' + message['content'].strip() + eos_token }}
    {% else %}
{{ '<|assistant|>\n' + message['content'].strip() + eos_token }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
{{ '<|assistant|>\n' }}
{% endif %}
"#;

/// SmolLM2-135M-Instruct's template (its tokenizer_config.json).
const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

fn template(source: &str, tokens: &[(&str, &str)]) -> ChatTemplate {
    let special_tokens = tokens
        .iter()
        .map(|(name, token)| (name.to_string(), token.to_string()))
        .collect();
    ChatTemplate::compile(TemplateSource {
        template: source.into(),
        special_tokens,
    })
    .expect("template compiles")
}

fn conversation() -> Vec<TemplateMessage> {
    vec![
        TemplateMessage::new("system", "  You are terse.\n"),
        TemplateMessage::new("user", "Hi "),
        TemplateMessage::new("assistant", "Hello!"),
        TemplateMessage::new("user", "Capital of France?"),
    ]
}

#[test]
fn renders_system_user_assistant_with_generation_prompt() {
    let chat = template(ZEPHYR_STYLE, &[("bos_token", "<s>"), ("eos_token", "</s>")]);
    let prompt = chat.render(&conversation(), true).expect("renders");
    assert_eq!(
        prompt,
        "<s>\n<|system|>\nYou are terse.</s>\n<|user|>\nHi</s>\n<|assistant|>\nHello!</s>\n\
         <|user|>\nCapital of France?</s>\n<|assistant|>\n\n"
    );
    let without_system = chat.render(&conversation()[1..3], false).expect("renders");
    assert_eq!(
        without_system,
        "<s>\n<|user|>\nHi</s>\n<|assistant|>\nHello!</s>\n"
    );
}

#[test]
fn raise_exception_reaches_the_caller_verbatim() {
    let chat = template(ZEPHYR_STYLE, &[("bos_token", "<s>"), ("eos_token", "</s>")]);
    let two_users = [
        TemplateMessage::new("user", "a"),
        TemplateMessage::new("user", "b"),
    ];
    let error = chat
        .render(&two_users, true)
        .expect_err("roles do not alternate");
    assert_eq!(
        error.to_string(),
        "the chat template failed: Conversation roles must alternate user/assistant/user/assistant/..."
    );
}

#[test]
fn smollm2_template_adds_its_default_system_prompt() {
    let chat = template(
        SMOLLM2,
        &[("bos_token", "<|im_start|>"), ("eos_token", "<|im_end|>")],
    );
    let messages = [TemplateMessage::new(
        "user",
        "What is the capital of France?",
    )];
    assert_eq!(
        chat.render(&messages, true).expect("renders"),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn python_methods_loop_controls_and_python_tojson() {
    let source = "{% for m in messages %}{% for k, v in m.items() %}{% if k == 'content' %}\
                  {{ v.upper() }}{% endif %}{% endfor %}{% if m.role == 'user' %}{% break %}\
                  {% endif %}{% endfor %}|{{ messages | tojson }}|{{ {'x': 1.0, 'y': 'é<'} | tojson(indent=2) }}";
    let chat = template(source, &[]);
    let messages = [
        TemplateMessage::new("system", "Be brief"),
        TemplateMessage::new("user", "Hi"),
        TemplateMessage::new("assistant", "Yo"),
    ];
    assert_eq!(
        chat.render(&messages, false).expect("renders"),
        "BE BRIEFHI|[{\"role\": \"system\", \"content\": \"Be brief\"}, {\"role\": \"user\", \
         \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Yo\"}]|{\n  \"x\": 1.0,\n  \"y\": \"é<\"\n}"
    );
}

#[test]
fn optional_message_keys_are_undefined_unless_given() {
    let chat = template(
        "{% for m in messages %}{{ m.name is defined }},{{ m.name }};{% endfor %}",
        &[],
    );
    let mut named = TemplateMessage::new("user", "x");
    named.name = Some("ada".into());
    let plain = TemplateMessage::new("user", "y");
    assert_eq!(
        chat.render(&[named, plain], false).expect("renders"),
        "True,ada;False,;"
    );
}

#[test]
fn strftime_now_and_undefined_special_tokens() {
    let chat = template(
        "{{ strftime_now('%Y') | length }}|{{ unk_token is defined }}",
        &[],
    );
    assert_eq!(chat.render(&[], false).expect("renders"), "4|False");
}

#[test]
fn syntax_errors_are_reported_at_load() {
    let source = TemplateSource {
        template: "{% for m in messages %}".into(),
        special_tokens: Default::default(),
    };
    let error = ChatTemplate::compile(source).expect_err("unclosed block");
    assert!(error.to_string().contains("does not compile"), "{error}");
}

/// A scratch model directory, removed on drop.
struct ModelDir(PathBuf);

impl ModelDir {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("ferrite-template-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.0.join(file), text).expect("write");
    }
}

impl Drop for ModelDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn loads_named_default_template_and_added_token_objects() {
    let dir = ModelDir::new("named");
    let config = json!({
        "bos_token": {"content": "<|im_start|>", "special": true},
        "eos_token": "<|im_end|>",
        "chat_template": [
            {"name": "tool_use", "template": "TOOLS"},
            {"name": "default", "template": SMOLLM2},
        ],
    });
    dir.write("tokenizer_config.json", &config.to_string());
    let chat = ChatTemplate::load(&dir.0)
        .expect("loads")
        .expect("has a template");
    assert_eq!(chat.special_token("bos_token"), Some("<|im_start|>"));
    assert_eq!(chat.special_token("eos_token"), Some("<|im_end|>"));
    let prompt = chat
        .render(&[TemplateMessage::new("system", "S")], false)
        .expect("renders");
    assert_eq!(prompt, "<|im_start|>system\nS<|im_end|>\n");

    // chat_template.jinja takes precedence over tokenizer_config.json.
    dir.write("chat_template.jinja", "{{ bos_token }}FILE");
    let chat = ChatTemplate::load(&dir.0)
        .expect("loads")
        .expect("has a template");
    assert_eq!(
        chat.render(&[], false).expect("renders"),
        "<|im_start|>FILE"
    );
}

#[test]
fn a_model_without_template_has_none() {
    let dir = ModelDir::new("none");
    assert!(ChatTemplate::load(&dir.0)
        .expect("no files is fine")
        .is_none());
    dir.write("tokenizer_config.json", r#"{"eos_token": "</s>"}"#);
    assert!(ChatTemplate::load(&dir.0).expect("loads").is_none());
    dir.write("tokenizer_config.json", "{not json");
    assert!(matches!(
        ChatTemplate::load(&dir.0),
        Err(TemplateError::Load { .. })
    ));
}

#[test]
fn an_explicit_tokenizer_config_replaces_the_directory_one() {
    let dir = ModelDir::new("explicit");
    dir.write(
        "tokenizer_config.json",
        r#"{"eos_token": "</s>", "chat_template": "DIR"}"#,
    );
    dir.write("chat_template.jinja", "JINJA");
    dir.write(
        "override.json",
        r#"{"eos_token": "<eot>", "chat_template": "{{ eos_token }}OVERRIDE"}"#,
    );
    let override_path = dir.0.join("override.json");
    let chat = ChatTemplate::load_with_config(&dir.0, Some(&override_path))
        .expect("loads")
        .expect("has a template");
    assert_eq!(chat.render(&[], false).expect("renders"), "<eot>OVERRIDE");
    // Without a chat_template of its own, the directory's template file still applies, with
    // the explicit file's special tokens.
    dir.write("override.json", r#"{"eos_token": "<eot>"}"#);
    let chat = ChatTemplate::load_with_config(&dir.0, Some(&override_path))
        .expect("loads")
        .expect("has a template");
    assert_eq!(chat.render(&[], false).expect("renders"), "JINJA");
    assert_eq!(chat.special_token("eos_token"), Some("<eot>"));
}
