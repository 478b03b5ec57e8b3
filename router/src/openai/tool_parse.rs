//! Reading tool calls out of a model's free answer (`tool_choice: "auto"`): the answer is a
//! call when it is, as a whole, JSON naming a callable function with an arguments object, in
//! the shapes models are trained to write:
//! - `{"name": "f", "arguments": {...}}` (what the tool prompt asks for; `"parameters"` is
//!   accepted for `"arguments"`, as Llama 3.1 writes it; arguments as a JSON string too);
//! - a list of such objects (parallel calls);
//! - either one wrapped in `<tool_call>...</tool_call>` blocks (Hermes / Qwen / SmolLM2) or in
//!   a Markdown code fence.
//!
//! Anything else (prose, JSON that is not a call, an unknown function) stays content.

use serde_json::{Map, Value};

const TOOL_CALL_OPEN: &str = "<tool_call>";
const TOOL_CALL_CLOSE: &str = "</tool_call>";
/// Keys a call object may have besides `name` and its arguments.
const OTHER_CALL_KEYS: [&str; 2] = ["type", "id"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCall {
    pub name: String,
    /// The arguments object as compact JSON text (OpenAI's `function.arguments`).
    pub arguments: String,
}

/// Whether an answer whose first non-blank character is `first` may turn out to be a call:
/// a stream holds such an answer until it is complete, and streams any other as content.
pub fn may_be_call(first: char) -> bool {
    matches!(first, '{' | '[' | '<' | '`')
}

/// The calls `text` makes, or None when it is not (entirely) tool calls of `callable`.
pub fn parse_calls(text: &str, callable: &[String]) -> Option<Vec<ParsedCall>> {
    let text = text.trim();
    let mut calls = Vec::new();
    if text.starts_with(TOOL_CALL_OPEN) {
        for block in tool_call_blocks(text)? {
            calls.extend(json_calls(block, callable)?);
        }
    } else {
        calls = json_calls(without_code_fence(text), callable)?;
    }
    (!calls.is_empty()).then_some(calls)
}

/// The insides of `<tool_call>` blocks that make up all of `text` (the last one may be left
/// unclosed: the model may end the answer there).
fn tool_call_blocks(text: &str) -> Option<Vec<&str>> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let inside = rest.strip_prefix(TOOL_CALL_OPEN)?;
        match inside.find(TOOL_CALL_CLOSE) {
            Some(end) => {
                blocks.push(&inside[..end]);
                rest = inside[end + TOOL_CALL_CLOSE.len()..].trim_start();
            }
            None => {
                blocks.push(inside);
                rest = "";
            }
        }
    }
    Some(blocks)
}

/// ```` ```json\n...\n``` ```` → the inside; other text as it is.
fn without_code_fence(text: &str) -> &str {
    let Some(inside) = text.strip_prefix("```") else {
        return text;
    };
    let inside = inside.strip_prefix("json").unwrap_or(inside);
    inside.strip_suffix("```").unwrap_or(inside).trim()
}

fn json_calls(text: &str, callable: &[String]) -> Option<Vec<ParsedCall>> {
    match serde_json::from_str::<Value>(text.trim()).ok()? {
        Value::Object(call) => Some(vec![one_call(&call, callable)?]),
        Value::Array(items) => items
            .iter()
            .map(|item| one_call(item.as_object()?, callable))
            .collect(),
        _ => None,
    }
}

fn one_call(call: &Map<String, Value>, callable: &[String]) -> Option<ParsedCall> {
    let name = call.get("name")?.as_str()?;
    if !callable.iter().any(|known| known == name) {
        return None;
    }
    let mut arguments = None;
    for (key, value) in call {
        match key.as_str() {
            "name" => {}
            "arguments" | "parameters" if arguments.is_none() => {
                arguments = Some(arguments_object(value)?);
            }
            key if OTHER_CALL_KEYS.contains(&key) => {}
            // Other keys (or both `arguments` and `parameters`): JSON, but not a call.
            _ => return None,
        }
    }
    let arguments = arguments.unwrap_or_default();
    Some(ParsedCall {
        name: name.to_string(),
        arguments: Value::Object(arguments).to_string(),
    })
}

/// An arguments object, given as an object or as JSON text of one.
fn arguments_object(value: &Value) -> Option<Map<String, Value>> {
    match value {
        Value::Object(arguments) => Some(arguments.clone()),
        Value::String(text) => match serde_json::from_str(text).ok()? {
            Value::Object(arguments) => Some(arguments),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["get_weather".into(), "get_time".into()]
    }

    fn call(name: &str, arguments: &str) -> ParsedCall {
        ParsedCall {
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    #[test]
    fn a_call_in_the_shapes_models_write() {
        let weather = call("get_weather", r#"{"city":"Paris","days":2}"#);
        for text in [
            r#"{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}"#,
            r#"  {"name":"get_weather","parameters":{"city":"Paris","days":2}} "#,
            r#"{"type": "function", "name": "get_weather", "arguments": "{\"city\": \"Paris\", \"days\": 2}"}"#,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}\n</tool_call>",
            "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}",
            "```json\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}\n```",
        ] {
            assert_eq!(
                parse_calls(text, &names()),
                Some(vec![weather.clone()]),
                "{text}"
            );
        }
        // Key order is the model's (not sorted); a call without arguments has `{}`.
        assert_eq!(
            parse_calls(r#"{"name": "get_time"}"#, &names()),
            Some(vec![call("get_time", "{}")])
        );
        assert_eq!(
            parse_calls(
                r#"{"name": "get_weather", "arguments": {"z": 1, "a": 2}}"#,
                &names()
            ),
            Some(vec![call("get_weather", r#"{"z":1,"a":2}"#)])
        );
    }

    #[test]
    fn parallel_calls_as_a_list_or_several_blocks() {
        let expected = Some(vec![
            call("get_weather", r#"{"city":"Rome"}"#),
            call("get_time", r#"{"zone":"CET"}"#),
        ]);
        let list = r#"[{"name": "get_weather", "arguments": {"city": "Rome"}},
                       {"name": "get_time", "arguments": {"zone": "CET"}}]"#;
        assert_eq!(parse_calls(list, &names()), expected);
        let blocks = "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}</tool_call>\n\
                      <tool_call>{\"name\": \"get_time\", \"arguments\": {\"zone\": \"CET\"}}</tool_call>";
        assert_eq!(parse_calls(blocks, &names()), expected);
    }

    #[test]
    fn anything_else_is_content() {
        for text in [
            "The weather in Paris is sunny.",
            "",
            // Invalid JSON, cut JSON.
            r#"{"name": "get_weather", "arguments": {"city": "Paris"}"#,
            r#"{"name": "get_weather", "arguments": {city: Paris}}"#,
            // Not a callable function.
            r#"{"name": "send_email", "arguments": {}}"#,
            r#"{"name": "get_weather", "arguments": {}} and more text"#,
            // JSON that is not a call.
            r#"{"city": "Paris"}"#,
            r#"{"name": "get_weather", "arguments": {}, "population": 3}"#,
            r#"{"name": "get_weather", "arguments": [1, 2]}"#,
            r#"{"name": "get_weather", "arguments": "not json"}"#,
            "[]",
            r#"[{"name": "get_weather", "arguments": {}}, 3]"#,
            "<tool_call>{\"name\": \"get_weather\"}</tool_call> trailing words",
            "\"get_weather\"",
        ] {
            assert_eq!(parse_calls(text, &names()), None, "{text}");
        }
        assert!(may_be_call('{') && may_be_call('<') && !may_be_call('T'));
    }
}
