//! OpenAI's `tools` and `tool_choice` on chat completions: which functions the model may call,
//! and whether it must.
//! - no tools, `tools: []` or `tool_choice: "none"`: plain chat, as if neither were sent;
//! - `"required"` or a named function: the answer is forced to be a call by a grammar (a JSON
//!   schema of `{"name", "arguments"}` per callable tool, compiled by the shards before the
//!   request is queued, as `response_format` is);
//! - `"auto"` (the default with tools): the model sees the tools (tool_prompt.rs) and chooses;
//!   its answer is parsed (tool_parse.rs) into calls or left as content.
//!
//! A call is one JSON object `{"name": NAME, "arguments": {...}}` in this key order (the
//! grammar's property order, which serde_json's `preserve_order` keeps), so a streamed call can
//! send its name before its arguments (tool_stream.rs).

use serde_json::{json, Map, Value};

use crate::proto;

use super::error::OpenAiError;

/// What the model may call: the request's function tools.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionTool {
    pub name: String,
    /// JSON schema of the arguments object (`{"type": "object", "properties": {}}` if none).
    pub parameters: Value,
    /// The tool entry as given (`{"type": "function", "function": {...}}`), for the template.
    pub definition: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolMode {
    /// The model answers or calls; its output is parsed.
    Auto,
    /// The output is a call, enforced by a grammar.
    Forced,
}

/// The checked `tools` + `tool_choice` of a request that uses tools.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolUse {
    /// Every tool of the request (the template shows them all).
    pub tools: Vec<FunctionTool>,
    pub mode: ToolMode,
    /// Names the answer may call: all tools, or the one `tool_choice` names.
    pub callable: Vec<String>,
}

/// None when the request uses no tools (absent, `[]`, `"none"`); 400 for malformed entries,
/// duplicate names, a `tool_choice` naming a function not in `tools`, or forcing a call
/// without tools.
pub fn check_tools(
    tools: Option<&Value>,
    tool_choice: Option<&Value>,
) -> Result<Option<ToolUse>, OpenAiError> {
    let tools = match tools {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(entries)) => entries
            .iter()
            .enumerate()
            .map(|(index, entry)| function_tool(index, entry))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(invalid_tools("`tools` must be a list of function tools")),
    };
    for (index, tool) in tools.iter().enumerate() {
        if tools[..index].iter().any(|other| other.name == tool.name) {
            let message = format!("`tools` names the function `{}` twice", tool.name);
            return Err(invalid_tools(message));
        }
    }
    let names = || tools.iter().map(|tool| tool.name.clone()).collect();
    let (mode, callable) = match tool_choice.filter(|choice| !choice.is_null()) {
        None => (ToolMode::Auto, names()),
        Some(Value::String(choice)) => match choice.as_str() {
            "none" => return Ok(None),
            "auto" => (ToolMode::Auto, names()),
            "required" if tools.is_empty() => {
                let message = "`tool_choice` \"required\" needs at least one tool in `tools`";
                return Err(invalid_choice(message));
            }
            "required" => (ToolMode::Forced, names()),
            other => {
                let message = format!(
                    "`tool_choice` must be \"none\", \"auto\", \"required\" or \
                     {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}. Given: {other:?}"
                );
                return Err(invalid_choice(message));
            }
        },
        Some(named) => (ToolMode::Forced, vec![named_choice(named, &tools)?]),
    };
    if tools.is_empty() {
        return Ok(None);
    }
    Ok(Some(ToolUse {
        tools,
        mode,
        callable,
    }))
}

impl ToolUse {
    /// The grammar that forces a call (None for `auto`). Each callable tool's parameters
    /// schema moves under `$defs` (its own local `$ref`s rewritten to match) so that the
    /// schemas of several tools cannot collide.
    pub fn grammar(&self) -> Option<proto::Grammar> {
        if self.mode != ToolMode::Forced {
            return None;
        }
        let mut definitions = Map::new();
        let mut calls = Vec::new();
        for (index, tool) in self.callable_tools().enumerate() {
            let key = definition_key(index, &tool.name);
            let pointer = format!("#/$defs/{key}");
            definitions.insert(key, with_refs_under(&tool.parameters, &pointer));
            calls.push(json!({
                "type": "object",
                "properties": {"name": {"const": tool.name}, "arguments": {"$ref": pointer}},
                "required": ["name", "arguments"],
                "additionalProperties": false,
            }));
        }
        let mut schema = match <[Value; 1]>::try_from(calls) {
            Ok([call]) => call,
            Err(calls) => json!({"anyOf": calls}),
        };
        schema["$defs"] = Value::Object(definitions);
        Some(proto::Grammar {
            kind: proto::GrammarKind::JsonSchema as i32,
            value: schema.to_string(),
        })
    }

    /// The tools the answer may call, in the request's order.
    pub fn callable_tools(&self) -> impl Iterator<Item = &FunctionTool> {
        self.tools
            .iter()
            .filter(|tool| self.callable.contains(&tool.name))
    }

    /// A refused forced-call grammar as a 422 naming the tools whose schemas it holds.
    pub fn refused(&self, reason: impl std::fmt::Display) -> OpenAiError {
        let names: Vec<String> = self
            .callable
            .iter()
            .map(|name| format!("`{name}`"))
            .collect();
        OpenAiError::Unprocessable {
            param: "tools",
            message: format!(
                "the parameters schema of {} cannot be enforced: {reason}",
                names.join(", ")
            ),
        }
    }
}

fn function_tool(index: usize, entry: &Value) -> Result<FunctionTool, OpenAiError> {
    let malformed = |what: &str| invalid_tools(format!("`tools[{index}]` {what}"));
    if entry.get("type").and_then(Value::as_str) != Some("function") {
        return Err(malformed("must have `\"type\": \"function\"`"));
    }
    let Some(function) = entry
        .get("function")
        .filter(|function| function.is_object())
    else {
        return Err(malformed("must have a `function` object"));
    };
    let name = match function.get("name").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => return Err(malformed("must have a non-empty `function.name`")),
    };
    let parameters = match function.get("parameters") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(schema @ (Value::Object(_) | Value::Bool(_))) => schema.clone(),
        Some(_) => {
            return Err(malformed(
                "`function.parameters` must be a JSON schema object",
            ))
        }
    };
    Ok(FunctionTool {
        name,
        parameters,
        definition: entry.clone(),
    })
}

fn named_choice(choice: &Value, tools: &[FunctionTool]) -> Result<String, OpenAiError> {
    let name = choice
        .get("function")
        .and_then(|function| function.get("name"))
        .and_then(Value::as_str)
        .filter(|_| choice.get("type").and_then(Value::as_str) == Some("function"));
    let Some(name) = name else {
        let message = "a named `tool_choice` must be {\"type\": \"function\", \"function\": \
                       {\"name\": ...}}";
        return Err(invalid_choice(message));
    };
    if !tools.iter().any(|tool| tool.name == name) {
        let message = format!("`tool_choice` names the function `{name}`, which is not in `tools`");
        return Err(invalid_choice(message));
    }
    Ok(name.to_string())
}

/// `$defs` key of a tool's parameters: its name where that is a plain JSON pointer token (so
/// an engine's error paths read naturally), else its position.
fn definition_key(index: usize, name: &str) -> String {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        name.to_string()
    } else {
        format!("tool_{index}")
    }
}

/// `schema` with every local `$ref` (`#...`, relative to the schema's root) moved under
/// `pointer`, where the schema will live. Literal data (`const`, `enum`, defaults, examples)
/// is left alone; maps of named subschemas (`properties`, `$defs`, ...) are walked whatever
/// their names.
fn with_refs_under(schema: &Value, pointer: &str) -> Value {
    match schema {
        Value::Object(entries) => Value::Object(
            entries
                .iter()
                .map(|(key, value)| {
                    let value = match (key.as_str(), value) {
                        ("$ref", Value::String(target)) if target.starts_with('#') => {
                            Value::String(format!("{pointer}{}", &target[1..]))
                        }
                        ("const" | "enum" | "default" | "examples", _) => value.clone(),
                        (
                            "properties" | "patternProperties" | "$defs" | "definitions"
                            | "dependentSchemas",
                            Value::Object(named),
                        ) => Value::Object(
                            named
                                .iter()
                                .map(|(name, sub)| (name.clone(), with_refs_under(sub, pointer)))
                                .collect(),
                        ),
                        _ => with_refs_under(value, pointer),
                    };
                    (key.clone(), value)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| with_refs_under(item, pointer))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn invalid_tools(message: impl Into<String>) -> OpenAiError {
    OpenAiError::invalid("tools", message)
}

fn invalid_choice(message: impl Into<String>) -> OpenAiError {
    OpenAiError::invalid("tool_choice", message)
}

#[cfg(test)]
mod tests;
