use serde_json::json;

use super::*;
use crate::openai::template::TemplateSource;
use crate::openai::tools::check_tools;

/// SmolLM2-135M-Instruct's template: no `tools`, no `tool_calls`.
const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A Qwen2.5-style template that shows tools itself and prints calls' arguments with tojson.
const WITH_TOOLS: &str = "{% if tools %}<tools>{% for tool in tools %}{{ tool.function.name }};{% endfor %}</tools>\n{% endif %}\
{% for m in messages %}{% if m.tool_calls %}{% for call in m.tool_calls %}<call>{{ call.function.name }} {{ call.function.arguments | tojson }}</call>{% endfor %}\
{% else %}<{{ m.role }}>{{ m.content }}{% if m.tool_call_id %} ({{ m.tool_call_id }}){% endif %}\n{% endif %}{% endfor %}";

fn template(source: &str) -> ChatTemplate {
    ChatTemplate::compile(TemplateSource {
        template: source.into(),
        special_tokens: Default::default(),
    })
    .expect("compiles")
}

fn tools(choice: serde_json::Value) -> ToolUse {
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "description": "Weather", "parameters": {"type": "object",
        "properties": {"city": {"type": "string"}}}}}]);
    check_tools(Some(&tools), Some(&choice))
        .expect("valid")
        .expect("tools")
}

fn conversation() -> Vec<TemplateMessage> {
    let mut call = TemplateMessage::new("assistant", "");
    call.tool_calls = Some(json!([{"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]));
    let mut result = TemplateMessage::new("tool", "22 C, sunny");
    result.tool_call_id = Some("call_1".into());
    vec![
        TemplateMessage::new("user", "Weather in Paris?"),
        call,
        result,
    ]
}

fn render(template: &ChatTemplate, input: TemplateInput) -> String {
    template
        .render_with_tools(&input.messages, input.tools.as_deref(), true)
        .expect("renders")
}

#[test]
fn a_template_without_tools_gets_them_in_the_last_user_message() {
    let template = template(SMOLLM2);
    assert!(!template.reads_tools() && !template.reads_tool_calls());
    let messages = vec![
        TemplateMessage::new("user", "Hi"),
        TemplateMessage::new("assistant", "Hello"),
        TemplateMessage::new("user", "Weather in Paris?"),
    ];
    for choice in [json!("auto"), json!("required")] {
        let input =
            template_input(&template, messages.clone(), Some(&tools(choice)), None).expect("valid");
        assert_eq!(input.tools, None);
        assert_eq!(input.messages[0], messages[0]);
        assert_eq!(
            input.messages[2].content,
            format!(
                "Weather in Paris?\n\n---\n{DEFAULT_TOOL_PROMPT}\n{{\"name\":\"get_weather\",\
                 \"description\":\"Weather\",\"parameters\":{{\"type\":\"object\",\
                 \"properties\":{{\"city\":{{\"type\":\"string\"}}}}}}}}"
            )
        );
    }
    let custom = template_input(
        &template,
        messages.clone(),
        Some(&tools(json!("auto"))),
        Some("Use a tool."),
    )
    .expect("valid");
    assert!(custom.messages[2]
        .content
        .starts_with("Weather in Paris?\n\n---\nUse a tool.\n{"));
    let plain =
        template_input(&template, messages.clone(), None, Some("Use a tool.")).expect("valid");
    assert_eq!(plain.messages, messages, "no tools: nothing added");
}

#[test]
fn earlier_calls_and_results_reach_a_template_without_tool_support_as_text() {
    let template = template(SMOLLM2);
    let input = template_input(&template, conversation(), Some(&tools(json!("auto"))), None)
        .expect("valid");
    let prompt = render(&template, input);
    assert!(
        prompt.contains(
            "<|im_start|>assistant\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}<|im_end|>\n\
             <|im_start|>tool\n22 C, sunny<|im_end|>\n<|im_start|>assistant\n"
        ),
        "{prompt}"
    );
    // The tools went to the last user message, before the call and its result.
    assert!(
        prompt.find(DEFAULT_TOOL_PROMPT) < prompt.find("22 C"),
        "{prompt}"
    );
}

#[test]
fn a_template_with_tool_support_gets_tools_and_argument_objects() {
    let template = template(WITH_TOOLS);
    assert!(template.reads_tools() && template.reads_tool_calls());
    let input = template_input(&template, conversation(), Some(&tools(json!("auto"))), None)
        .expect("valid");
    assert_eq!(
        input.messages[0].content, "Weather in Paris?",
        "the template shows the tools"
    );
    let prompt = render(&template, input);
    assert_eq!(
        prompt,
        // (trim_blocks eats the newline after each `{% endif %}`.)
        "<tools>get_weather;</tools>\n<user>Weather in Paris?\
         <call>get_weather {\"city\": \"Paris\"}</call><tool>22 C, sunny (call_1)"
    );
}

#[test]
fn malformed_tool_calls_in_messages_are_400() {
    let template = template(SMOLLM2);
    for calls in [
        json!("get_weather"),
        json!([{"id": "1"}]),
        json!([{"function": {"arguments": "{}"}}]),
    ] {
        let mut message = TemplateMessage::new("assistant", "");
        message.tool_calls = Some(calls.clone());
        let error = template_input(&template, vec![message], None, None).expect_err("refused");
        assert_eq!(
            (error.status().as_u16(), error.body().error.param.as_deref()),
            (400, Some("messages")),
            "{calls}"
        );
    }
    // null calls, and arguments that are not JSON, are accepted as they are.
    let mut message = TemplateMessage::new("assistant", "Sure.");
    message.tool_calls = Some(json!([{"function": {"name": "f", "arguments": "not json"}}]));
    let input = template_input(&template, vec![message], None, None).expect("valid");
    assert_eq!(
        input.messages[0].content,
        "Sure.\n{\"name\":\"f\",\"arguments\":\"not json\"}"
    );
}
