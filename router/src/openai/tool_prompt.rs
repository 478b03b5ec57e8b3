//! How tools and earlier tool calls reach the chat template.
//! - A template that reads `tools` gets them as that variable (as transformers hands them).
//!   For one that does not (SmolLM2's), the tools and an instruction (`tool_prompt`, TGI's
//!   field, replaces the instruction) are appended to the last user message, as TGI does.
//! - Assistant turns that called tools: a template that reads `tool_calls` gets them with
//!   their arguments as objects (Hugging Face templates print them with `tojson`; OpenAI sends
//!   them as JSON text), others see the calls written into the turn's text the way the model
//!   is asked to write them, so it sees what it called.
//! - Tool results (`role: "tool"`, `tool_call_id`) are messages like any other.

use serde_json::{json, Value};

use super::error::OpenAiError;
use super::template::{ChatTemplate, TemplateMessage};
use super::tools::ToolUse;

pub const DEFAULT_TOOL_PROMPT: &str = "You can call the functions below. To call one, answer \
     with only a JSON object {\"name\": <function name>, \"arguments\": <object of its \
     arguments>}; otherwise answer in text.";

/// The messages and tools as the template will see them.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateInput {
    pub messages: Vec<TemplateMessage>,
    /// The `tools` variable (only for templates that read it).
    pub tools: Option<Vec<Value>>,
}

pub fn template_input(
    template: &ChatTemplate,
    messages: Vec<TemplateMessage>,
    tools: Option<&ToolUse>,
    tool_prompt: Option<&str>,
) -> Result<TemplateInput, OpenAiError> {
    let mut messages = messages
        .into_iter()
        .map(|message| with_tool_calls(message, template.reads_tool_calls()))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(tools) = tools else {
        return Ok(TemplateInput {
            messages,
            tools: None,
        });
    };
    let definitions: Vec<Value> = tools
        .tools
        .iter()
        .map(|tool| tool.definition.clone())
        .collect();
    if template.reads_tools() {
        return Ok(TemplateInput {
            messages,
            tools: Some(definitions),
        });
    }
    let functions: Vec<String> = definitions
        .iter()
        .map(|definition| definition["function"].to_string())
        .collect();
    let instruction = tool_prompt.unwrap_or(DEFAULT_TOOL_PROMPT);
    let appended = format!("\n\n---\n{instruction}\n{}", functions.join("\n"));
    let last_user = messages.iter().rposition(|message| message.role == "user");
    if let Some(message) = last_user
        .or(messages.len().checked_sub(1))
        .and_then(|index| messages.get_mut(index))
    {
        message.content.push_str(&appended);
    }
    Ok(TemplateInput {
        messages,
        tools: None,
    })
}

/// An assistant turn's `tool_calls`, checked, in the form the template can use.
fn with_tool_calls(
    mut message: TemplateMessage,
    template_reads_calls: bool,
) -> Result<TemplateMessage, OpenAiError> {
    let Some(calls) = message.tool_calls.take().filter(|calls| !calls.is_null()) else {
        return Ok(message);
    };
    let malformed = || {
        OpenAiError::invalid(
            "messages",
            "a message's `tool_calls` must be a list of {\"id\": ..., \"type\": \"function\", \
             \"function\": {\"name\": ..., \"arguments\": ...}}",
        )
    };
    let calls = calls.as_array().ok_or_else(malformed)?;
    let mut for_template = Vec::with_capacity(calls.len());
    let mut as_text = Vec::with_capacity(calls.len());
    for call in calls {
        let function = call.get("function").ok_or_else(malformed)?;
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(malformed)?;
        let arguments = match function.get("arguments") {
            None | Some(Value::Null) => json!({}),
            // JSON text (OpenAI's form) as the object it holds; other text as it is.
            Some(Value::String(text)) => serde_json::from_str(text).unwrap_or(json!(text)),
            Some(other) => other.clone(),
        };
        let mut call = call.clone();
        call["function"]["arguments"] = arguments.clone();
        for_template.push(call);
        as_text.push(json!({"name": name, "arguments": arguments}));
    }
    if template_reads_calls {
        message.tool_calls = Some(Value::Array(for_template));
        return Ok(message);
    }
    let written = match <[Value; 1]>::try_from(as_text) {
        Ok([one]) => one.to_string(),
        Err(many) => Value::Array(many).to_string(),
    };
    if !message.content.is_empty() {
        message.content.push('\n');
    }
    message.content.push_str(&written);
    Ok(message)
}

#[cfg(test)]
mod tests;
