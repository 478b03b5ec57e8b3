//! One choice's answer when it may call tools: released text in, content or tool-call pieces
//! out, the same machine for a stream and for a whole answer (which runs it over the whole
//! text), so a streamed call assembled by a client equals the whole one.
//! - Forced (`required` / named): the grammar makes the answer `{"name":N,"arguments":A}`.
//!   Once the name is complete and the arguments begin, the call's first piece goes out (`id`,
//!   `type`, `function.name`, `arguments: ""`), then the arguments as they come, holding back
//!   only a tail that may be the call object's closing brace.
//! - Auto: an answer that starts like JSON or a tag (`may_be_call`) is held until it ends and
//!   then parsed (tool_parse.rs) into calls, or given as content; any other answer streams as
//!   content right away.

use super::response::{FunctionCall, FunctionCallDelta, ToolCall, ToolCallDelta};
use super::tool_parse::{may_be_call, parse_calls};
use super::tools::{ToolMode, ToolUse};
use crate::generation::FinishReason;

const FUNCTION: &str = "function";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolPiece {
    Content(String),
    Call(ToolCallDelta),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Auto: only blank text so far, the answer's kind is open.
    Start,
    /// Auto: the answer may be a call; everything is held until it ends.
    Held,
    /// Plain content, passed on as it comes.
    Content,
    /// Forced: before the arguments (`{"name":"f","arguments":`).
    Header,
    /// Forced: inside the arguments.
    Arguments,
    Done,
}

#[derive(Debug, Clone)]
pub struct ToolCallStream {
    callable: Vec<String>,
    phase: Phase,
    /// Text received and not yet passed on.
    pending: String,
    num_calls: u32,
}

/// A whole choice: content (None when the answer is calls) and the calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WholeAnswer {
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
}

impl ToolCallStream {
    pub fn new(tool_use: &ToolUse) -> Self {
        Self {
            callable: tool_use.callable.clone(),
            phase: match tool_use.mode {
                ToolMode::Auto => Phase::Start,
                ToolMode::Forced => Phase::Header,
            },
            pending: String::new(),
            num_calls: 0,
        }
    }

    /// Whether the answer became tool calls (its finish reason is then `tool_calls`).
    pub fn called(&self) -> bool {
        self.num_calls > 0
    }

    pub fn push(&mut self, text: &str) -> Vec<ToolPiece> {
        self.pending.push_str(text);
        match self.phase {
            Phase::Start => match self.pending.trim_start().chars().next() {
                None => Vec::new(),
                Some(first) if may_be_call(first) => {
                    self.phase = Phase::Held;
                    Vec::new()
                }
                Some(_) => self.become_content(),
            },
            Phase::Held | Phase::Done => Vec::new(),
            Phase::Content => self.become_content(),
            Phase::Header => match match_header(&self.pending, &self.callable) {
                HeaderMatch::NeedMore => Vec::new(),
                HeaderMatch::Mismatch => self.become_content(),
                HeaderMatch::Done { name, len } => {
                    self.pending.drain(..len);
                    self.phase = Phase::Arguments;
                    let mut pieces = vec![self.open_call(name)];
                    pieces.extend(self.arguments_piece(false));
                    pieces
                }
            },
            Phase::Arguments => self.arguments_piece(false).into_iter().collect(),
        }
    }

    /// The pieces still held when the choice ends.
    pub fn finish(&mut self, finish: FinishReason) -> Vec<ToolPiece> {
        let phase = std::mem::replace(&mut self.phase, Phase::Done);
        let text = std::mem::take(&mut self.pending);
        match phase {
            Phase::Start | Phase::Held => match parse_calls(&text, &self.callable) {
                Some(calls) => calls
                    .into_iter()
                    .flat_map(|call| {
                        let open = self.open_call(call.name);
                        [open, self.arguments(call.arguments)]
                    })
                    .collect(),
                None => content(text),
            },
            Phase::Content | Phase::Done => Vec::new(),
            // Cut before the arguments began (max_tokens): what there is, as content.
            Phase::Header => content(text),
            Phase::Arguments => {
                // The held tail is the call's closing brace, unless the answer was cut.
                self.pending = text;
                self.arguments_piece(finish == FinishReason::Length)
                    .into_iter()
                    .collect()
            }
        }
    }

    fn become_content(&mut self) -> Vec<ToolPiece> {
        self.phase = Phase::Content;
        content(std::mem::take(&mut self.pending))
    }

    fn open_call(&mut self, name: String) -> ToolPiece {
        self.num_calls += 1;
        ToolPiece::Call(ToolCallDelta {
            index: self.num_calls - 1,
            id: Some(call_id()),
            kind: Some(FUNCTION),
            function: FunctionCallDelta {
                name: Some(name),
                arguments: String::new(),
            },
        })
    }

    fn arguments(&self, text: String) -> ToolPiece {
        ToolPiece::Call(ToolCallDelta {
            index: self.num_calls.saturating_sub(1),
            id: None,
            kind: None,
            function: FunctionCallDelta {
                name: None,
                arguments: text,
            },
        })
    }

    /// The pending arguments text, but for a tail that may close the call (all of it with
    /// `flush`). Which text is held depends only on the text's end, so the pieces add up to
    /// the same arguments however the text was split.
    fn arguments_piece(&mut self, flush: bool) -> Option<ToolPiece> {
        let held = if flush {
            0
        } else {
            closing_tail_len(&self.pending)
        };
        let ready: String = self.pending.drain(..self.pending.len() - held).collect();
        (!ready.is_empty()).then(|| self.arguments(ready))
    }
}

/// Runs a whole answer through the stream machine and assembles its pieces.
pub fn whole_answer(tool_use: &ToolUse, text: &str, finish: FinishReason) -> WholeAnswer {
    let mut stream = ToolCallStream::new(tool_use);
    let mut pieces = stream.push(text);
    pieces.extend(stream.finish(finish));
    let mut content = String::new();
    let mut tool_calls: Vec<ToolCall> = Vec::new();
    for piece in pieces {
        match piece {
            ToolPiece::Content(text) => content.push_str(&text),
            ToolPiece::Call(delta) => match tool_calls.get_mut(delta.index as usize) {
                Some(call) => call.function.arguments.push_str(&delta.function.arguments),
                None => tool_calls.push(ToolCall {
                    id: delta.id.unwrap_or_else(call_id),
                    kind: FUNCTION,
                    function: FunctionCall {
                        name: delta.function.name.unwrap_or_default(),
                        arguments: delta.function.arguments,
                    },
                }),
            },
        }
    }
    WholeAnswer {
        content: tool_calls.is_empty().then_some(content),
        tool_calls,
    }
}

fn content(text: String) -> Vec<ToolPiece> {
    if text.is_empty() {
        Vec::new()
    } else {
        vec![ToolPiece::Content(text)]
    }
}

/// OpenAI's shape of call ids: `call_` and 24 random hex digits.
fn call_id() -> String {
    format!("call_{:024x}", rand::random::<u128>() >> 32)
}

#[derive(Debug, PartialEq, Eq)]
enum HeaderMatch {
    NeedMore,
    Mismatch,
    /// The call's name, and the bytes up to the first byte of its arguments.
    Done {
        name: String,
        len: usize,
    },
}

/// Matches `{"name": "<callable>", "arguments":` (blanks allowed between the parts) followed by
/// the first non-blank byte of the arguments.
fn match_header(text: &str, callable: &[String]) -> HeaderMatch {
    let quoted: Vec<String> = callable
        .iter()
        .map(|name| serde_json::Value::from(name.as_str()).to_string())
        .collect();
    let mut rest = text;
    let mut name = None;
    for part in ["{", "\"name\"", ":", "", ",", "\"arguments\"", ":"] {
        rest = rest.trim_start();
        let candidates: Vec<&str> = if part.is_empty() {
            quoted.iter().map(String::as_str).collect()
        } else {
            vec![part]
        };
        match candidates
            .iter()
            .position(|candidate| rest.starts_with(candidate))
        {
            Some(found) => {
                rest = &rest[candidates[found].len()..];
                if part.is_empty() {
                    name = Some(callable[found].clone());
                }
            }
            None if candidates
                .iter()
                .any(|candidate| candidate.starts_with(rest)) =>
            {
                return HeaderMatch::NeedMore
            }
            None => return HeaderMatch::Mismatch,
        }
    }
    rest = rest.trim_start();
    match name {
        Some(name) if !rest.is_empty() => HeaderMatch::Done {
            name,
            len: text.len() - rest.len(),
        },
        _ => HeaderMatch::NeedMore,
    }
}

/// Bytes at the end of `text` that may be the call object's end: blanks, or blanks, `}` and
/// blanks.
fn closing_tail_len(text: &str) -> usize {
    let trimmed = text.trim_end();
    match trimmed.strip_suffix('}') {
        Some(before) => text.len() - before.trim_end().len(),
        None => text.len() - trimmed.len(),
    }
}

#[cfg(test)]
mod tests;
