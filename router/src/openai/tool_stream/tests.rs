use serde_json::json;

use super::*;
use crate::openai::tools::check_tools;

fn tool_use(choice: serde_json::Value) -> ToolUse {
    let tools = json!([
        {"type": "function", "function": {"name": "get", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}},
    ]);
    check_tools(Some(&tools), Some(&choice))
        .expect("valid")
        .expect("tools")
}

const CALL: &str = r#"{"name":"get_weather","arguments":{"city":"Paris {}"}}"#;
const ARGUMENTS: &str = r#"{"city":"Paris {}"}"#;

/// Streams `parts`, then assembles the pieces as the `openai` client does: pieces of the same
/// index appended, `id` / `name` taken from the first.
fn streamed(tools: &ToolUse, parts: &[&str], finish: FinishReason) -> (String, Vec<ToolCall>) {
    let mut stream = ToolCallStream::new(tools);
    let mut pieces = Vec::new();
    for part in parts {
        pieces.extend(stream.push(part));
    }
    pieces.extend(stream.finish(finish));
    let mut content = String::new();
    let mut calls: Vec<ToolCall> = Vec::new();
    for piece in pieces {
        match piece {
            ToolPiece::Content(text) => content.push_str(&text),
            ToolPiece::Call(delta) if delta.index as usize == calls.len() => {
                assert!(
                    delta.id.is_some() && delta.kind == Some("function"),
                    "{delta:?}"
                );
                assert_eq!(
                    delta.function.arguments, "",
                    "the first piece only names the call"
                );
                calls.push(ToolCall {
                    id: delta.id.expect("id"),
                    kind: "function",
                    function: FunctionCall {
                        name: delta.function.name.expect("name"),
                        arguments: String::new(),
                    },
                });
            }
            ToolPiece::Call(delta) => {
                assert_eq!(
                    (&delta.id, delta.kind, &delta.function.name),
                    (&None, None, &None)
                );
                let call = &mut calls[delta.index as usize];
                call.function.arguments.push_str(&delta.function.arguments);
            }
        }
    }
    assert_eq!(stream.called(), !calls.is_empty());
    (content, calls)
}

fn names_and_arguments(calls: &[ToolCall]) -> Vec<(&str, &str)> {
    calls
        .iter()
        .map(|call| {
            (
                call.function.name.as_str(),
                call.function.arguments.as_str(),
            )
        })
        .collect()
}

#[test]
fn a_forced_call_streams_its_name_first_then_its_arguments() {
    let tools = tool_use(json!("required"));
    let mut stream = ToolCallStream::new(&tools);
    assert_eq!(stream.push(r#"{"name":"get"#), []);
    // `"get` could still become `"get_weather"`: nothing is sent before the name is whole and
    // the arguments began.
    assert_eq!(stream.push(r#"_weather","arguments":"#), []);
    let pieces = stream.push(r#"{"ci"#);
    let [ToolPiece::Call(open), ToolPiece::Call(more)] = pieces.as_slice() else {
        panic!("{pieces:?}");
    };
    assert_eq!((open.index, open.kind), (0, Some("function")));
    assert!(open
        .id
        .as_ref()
        .is_some_and(|id| id.starts_with("call_") && id.len() == 29));
    assert_eq!(
        open.function,
        FunctionCallDelta {
            name: Some("get_weather".into()),
            arguments: String::new()
        }
    );
    assert_eq!(more.function.arguments, r#"{"ci"#);
    // A closing brace may end the call: it is held until more text shows it does not.
    assert_eq!(
        stream.push(r#"ty":"Paris {}"#),
        [stream.arguments(r#"ty":"Paris {"#.into())]
    );
    assert_eq!(stream.push("\"}"), [stream.arguments("}\"".into())]);
    assert_eq!(stream.push("}"), [stream.arguments("}".into())]);
    assert_eq!(stream.finish(FinishReason::EndOfSequenceToken), []);
    assert!(stream.called());
}

#[test]
fn the_assembled_call_is_the_same_however_the_text_is_split() {
    let tools = tool_use(json!("required"));
    let whole = whole_answer(&tools, CALL, FinishReason::EndOfSequenceToken);
    assert_eq!(whole.content, None);
    assert_eq!(
        names_and_arguments(&whole.tool_calls),
        [("get_weather", ARGUMENTS)]
    );
    assert!(whole.tool_calls[0].id.starts_with("call_"));
    for split in 0..=CALL.len() {
        let (first, second) = CALL.split_at(split);
        let (content, calls) = streamed(&tools, &[first, second], FinishReason::EndOfSequenceToken);
        assert_eq!(
            (content.as_str(), names_and_arguments(&calls)),
            ("", vec![("get_weather", ARGUMENTS)])
        );
    }
    let bytes: Vec<String> = CALL.chars().map(String::from).collect();
    let parts: Vec<&str> = bytes.iter().map(String::as_str).collect();
    let (_, calls) = streamed(&tools, &parts, FinishReason::EndOfSequenceToken);
    assert_eq!(names_and_arguments(&calls), [("get_weather", ARGUMENTS)]);
    // Blanks between the parts (a grammar with flexible whitespace) change nothing.
    let spaced = "{ \"name\" : \"get\" ,\n \"arguments\" :  {\"a\": [1, {}]} \n}\n";
    let named = tool_use(json!({"type": "function", "function": {"name": "get"}}));
    for split in 0..=spaced.len() {
        let (first, second) = spaced.split_at(split);
        let (_, calls) = streamed(&named, &[first, second], FinishReason::StopSequence);
        assert_eq!(names_and_arguments(&calls), [("get", r#"{"a": [1, {}]}"#)]);
    }
}

#[test]
fn a_forced_call_cut_by_max_tokens_keeps_what_it_has() {
    let tools = tool_use(json!("required"));
    let cut = r#"{"name":"get_weather","arguments":{"city":"Pa"#;
    let whole = whole_answer(&tools, cut, FinishReason::Length);
    assert_eq!(
        names_and_arguments(&whole.tool_calls),
        [("get_weather", r#"{"city":"Pa"#)]
    );
    let (_, calls) = streamed(&tools, &[&cut[..30], &cut[30..]], FinishReason::Length);
    assert_eq!(
        names_and_arguments(&calls),
        [("get_weather", r#"{"city":"Pa"#)]
    );
    // Cut at a closing brace: it belongs to the arguments.
    let at_brace = r#"{"name":"get","arguments":{"a":{}"#;
    let whole = whole_answer(&tools, at_brace, FinishReason::Length);
    assert_eq!(
        names_and_arguments(&whole.tool_calls),
        [("get", r#"{"a":{}"#)]
    );
    // Cut before the arguments began: no call, the text is content.
    let early = whole_answer(&tools, r#"{"name":"ge"#, FinishReason::Length);
    assert_eq!(
        (early.content.as_deref(), early.tool_calls.len()),
        (Some(r#"{"name":"ge"#), 0)
    );
}

#[test]
fn forced_text_that_is_not_a_call_is_content() {
    // Only without the grammar (a refused mask leaves the model free): passed on as content.
    let tools = tool_use(json!("required"));
    for text in [
        r#"{"name":"send_email","arguments":{}}"#,
        "Hello",
        r#"{"city":"x"}"#,
    ] {
        let whole = whole_answer(&tools, text, FinishReason::EndOfSequenceToken);
        assert_eq!(
            (whole.content.as_deref(), whole.tool_calls.len()),
            (Some(text), 0)
        );
        let (content, calls) = streamed(
            &tools,
            &[&text[..3], &text[3..]],
            FinishReason::EndOfSequenceToken,
        );
        assert_eq!((content.as_str(), calls.len()), (text, 0));
    }
}

#[test]
fn auto_streams_prose_at_once_and_holds_what_may_be_a_call() {
    let tools = tool_use(json!("auto"));
    let mut stream = ToolCallStream::new(&tools);
    assert_eq!(stream.push("  "), []);
    assert_eq!(stream.push("The"), [ToolPiece::Content("  The".into())]);
    assert_eq!(
        stream.push(" weather {"),
        [ToolPiece::Content(" weather {".into())]
    );
    assert_eq!(stream.finish(FinishReason::EndOfSequenceToken), []);
    assert!(!stream.called());

    let mut stream = ToolCallStream::new(&tools);
    assert_eq!(stream.push(" {\"name\": \"get_weather\", "), []);
    assert_eq!(stream.push("\"arguments\": {\"city\": \"Rome\"}}"), []);
    let pieces = stream.finish(FinishReason::EndOfSequenceToken);
    assert_eq!(pieces.len(), 2, "{pieces:?}");
    assert_eq!(pieces[1], stream.arguments(r#"{"city":"Rome"}"#.into()));
    assert!(stream.called());
}

#[test]
fn auto_answers_become_calls_or_content() {
    let tools = tool_use(json!("auto"));
    let answer = |text: &str| whole_answer(&tools, text, FinishReason::EndOfSequenceToken);
    let call = answer("<tool_call>\n{\"name\": \"get\", \"arguments\": {}}\n</tool_call>");
    assert_eq!(
        (call.content, names_and_arguments(&call.tool_calls)),
        (None, vec![("get", "{}")])
    );
    let parallel =
        answer(r#"[{"name": "get"}, {"name": "get_weather", "arguments": {"city": "Oslo"}}]"#);
    assert_eq!(
        names_and_arguments(&parallel.tool_calls),
        [("get", "{}"), ("get_weather", r#"{"city":"Oslo"}"#)]
    );
    let (_, calls) = streamed(
        &tools,
        &[r#"[{"name": "get"}, "#, r#"{"name": "get"}]"#],
        FinishReason::EndOfSequenceToken,
    );
    assert_eq!(
        calls
            .iter()
            .map(|call| call.function.name.as_str())
            .collect::<Vec<_>>(),
        ["get", "get"]
    );
    assert_ne!(calls[0].id, calls[1].id);
    for text in [
        "Paris is sunny.",
        r#"{"name": "get_weather", "arguments": {"city": "Paris"}"#,
        r#"{"name": "unknown", "arguments": {}}"#,
        "   ",
        "",
    ] {
        let whole = answer(text);
        assert_eq!(
            (whole.content.as_deref(), whole.tool_calls.len()),
            (Some(text), 0),
            "{text}"
        );
        let (content, calls) = streamed(&tools, &[text], FinishReason::EndOfSequenceToken);
        assert_eq!((content.as_str(), calls.len()), (text, 0));
    }
}

#[test]
fn header_matching() {
    let names = ["get".to_string(), "get_weather".to_string()];
    assert_eq!(match_header("", &names), HeaderMatch::NeedMore);
    assert_eq!(
        match_header(r#"{"name":"get""#, &names),
        HeaderMatch::NeedMore
    );
    assert_eq!(
        match_header(r#"{"name":"get","arguments": "#, &names),
        HeaderMatch::NeedMore
    );
    assert_eq!(
        match_header(r#"{"name":"get","arguments": {"#, &names),
        HeaderMatch::Done {
            name: "get".into(),
            len: 27
        }
    );
    assert_eq!(
        match_header(r#"{"name":"got"#, &names),
        HeaderMatch::Mismatch
    );
    assert_eq!(
        match_header(r#"{"arguments":{}"#, &names),
        HeaderMatch::Mismatch
    );
    assert_eq!(match_header("Sure", &names), HeaderMatch::Mismatch);
    assert_eq!(closing_tail_len("{\"a\":1} \n}\n"), 4);
    assert_eq!(closing_tail_len("{\"a\":1"), 0);
    assert_eq!(closing_tail_len("[1, 2] "), 1);
}
