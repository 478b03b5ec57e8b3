use serde_json::json;

use super::*;

fn weather() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}, "unit": {"enum": ["C", "F"]}}, "required": ["city"]}}})
}

fn time() -> Value {
    json!({"type": "function", "function": {"name": "get_time"}})
}

fn checked(tools: Value, choice: Value) -> Result<Option<ToolUse>, OpenAiError> {
    check_tools(Some(&tools), Some(&choice))
}

/// The parameter a refusal names, and its status.
fn refusal(result: Result<Option<ToolUse>, OpenAiError>) -> (String, u16, String) {
    let error = result.expect_err("refused");
    let body = error.body().error;
    (
        body.param.expect("names a parameter"),
        error.status().as_u16(),
        body.message,
    )
}

#[test]
fn no_tools_and_none_behave_as_absent() {
    assert_eq!(check_tools(None, None).expect("valid"), None);
    for (tools, choice) in [
        (json!(null), json!(null)),
        (json!([]), json!(null)),
        (json!([]), json!("none")),
        (json!([]), json!("auto")),
        (json!([weather()]), json!("none")),
        (json!(null), json!("none")),
    ] {
        assert_eq!(
            checked(tools.clone(), choice.clone()).expect("valid"),
            None,
            "{tools} {choice}"
        );
    }
}

#[test]
fn auto_is_the_default_and_required_or_a_name_force_a_call() {
    let tools = json!([weather(), time()]);
    let auto = checked(tools.clone(), json!(null))
        .expect("valid")
        .expect("tools");
    assert_eq!(auto.mode, ToolMode::Auto);
    assert_eq!(auto.callable, ["get_weather", "get_time"]);
    assert_eq!(
        auto.tools[1].parameters,
        json!({"type": "object", "properties": {}})
    );
    assert_eq!(auto.tools[0].definition, weather());
    assert_eq!(auto.grammar(), None);
    assert_eq!(
        checked(tools.clone(), json!("auto")).expect("valid"),
        Some(auto)
    );
    let required = checked(tools.clone(), json!("required"))
        .expect("valid")
        .expect("tools");
    assert_eq!(
        (required.mode, required.callable.len()),
        (ToolMode::Forced, 2)
    );
    let named = json!({"type": "function", "function": {"name": "get_time"}});
    let named = checked(tools, named).expect("valid").expect("tools");
    assert_eq!(
        (named.mode, named.callable),
        (ToolMode::Forced, vec!["get_time".to_string()])
    );
    assert_eq!(named.tools.len(), 2, "the template still sees every tool");
}

#[test]
fn malformed_tools_and_choices_are_400s_naming_the_parameter() {
    let cases = [
        (json!({"type": "function"}), json!(null), "tools", "list"),
        (
            json!([{"type": "function"}]),
            json!(null),
            "tools",
            "`tools[0]` must have a `function`",
        ),
        (
            json!([{"type": "retrieval", "function": {"name": "f"}}]),
            json!(null),
            "tools",
            "type",
        ),
        (
            json!([{"type": "function", "function": {"name": ""}}]),
            json!(null),
            "tools",
            "name",
        ),
        (
            json!([{"type": "function", "function": {"description": "d"}}]),
            json!(null),
            "tools",
            "name",
        ),
        (
            json!([{"type": "function", "function": {"name": "f", "parameters": "x"}}]),
            json!(null),
            "tools",
            "JSON schema",
        ),
        (json!([weather(), weather()]), json!(null), "tools", "twice"),
        (
            json!([weather()]),
            json!("sometimes"),
            "tool_choice",
            "sometimes",
        ),
        (
            json!([weather()]),
            json!({"type": "function", "function": {"name": "get_time"}}),
            "tool_choice",
            "`get_time`, which is not in `tools`",
        ),
        (
            json!([weather()]),
            json!({"function": {"name": "get_weather"}}),
            "tool_choice",
            "named",
        ),
        (json!([weather()]), json!(3), "tool_choice", "named"),
        (
            json!([]),
            json!("required"),
            "tool_choice",
            "at least one tool",
        ),
        (
            json!(null),
            json!({"type": "function", "function": {"name": "f"}}),
            "tool_choice",
            "not in `tools`",
        ),
    ];
    for (tools, choice, param, words) in cases {
        let (named, status, message) = refusal(checked(tools.clone(), choice.clone()));
        assert_eq!((named.as_str(), status), (param, 400), "{tools} {choice}");
        assert!(
            message.contains(words),
            "{message:?} should contain {words:?}"
        );
    }
}

fn grammar_of(tools: Value, choice: Value) -> Value {
    let grammar = checked(tools, choice)
        .expect("valid")
        .expect("tools")
        .grammar()
        .expect("forced");
    assert_eq!(grammar.kind, proto::GrammarKind::JsonSchema as i32);
    serde_json::from_str(&grammar.value).expect("JSON")
}

#[test]
fn a_named_choice_is_one_call_schema_with_name_first() {
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    let schema = grammar_of(json!([weather(), time()]), named);
    assert_eq!(
        schema,
        json!({
            "type": "object",
            "properties": {"name": {"const": "get_weather"},
                           "arguments": {"$ref": "#/$defs/get_weather"}},
            "required": ["name", "arguments"],
            "additionalProperties": false,
            "$defs": {"get_weather": weather()["function"]["parameters"]},
        })
    );
    // The text keeps this key order: the model writes the name before the arguments.
    let text = schema.to_string();
    assert!(text.find("\"name\"") < text.find("\"arguments\""), "{text}");
}

#[test]
fn required_is_any_of_the_tools_calls() {
    let schema = grammar_of(json!([weather(), time()]), json!("required"));
    let calls = schema["anyOf"].as_array().expect("anyOf");
    let names: Vec<&Value> = calls
        .iter()
        .map(|call| &call["properties"]["name"]["const"])
        .collect();
    assert_eq!(names, [&json!("get_weather"), &json!("get_time")]);
    assert_eq!(
        calls[1]["properties"]["arguments"],
        json!({"$ref": "#/$defs/get_time"})
    );
    let definitions = schema["$defs"].as_object().expect("$defs");
    assert_eq!(
        definitions.keys().collect::<Vec<_>>(),
        ["get_weather", "get_time"]
    );
}

#[test]
fn local_refs_follow_the_parameters_into_defs() {
    // What pydantic writes for a nested model, plus a recursive reference to the root, a
    // property literally named "enum", and data that only looks like a reference.
    let parameters = json!({
        "type": "object",
        "properties": {
            "place": {"$ref": "#/$defs/Place"},
            "enum": {"$ref": "#/definitions/Kind"},
            "next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]},
            "note": {"const": {"$ref": "#/not/a/schema"}, "default": {"$ref": "#"}},
            "remote": {"$ref": "https://example.com/schema.json"},
        },
        "$defs": {"Place": {"type": "object", "properties": {"inner": {"$ref": "#/$defs/Place"}}}},
        "definitions": {"Kind": {"enum": ["a", "b"]}},
    });
    let tool =
        json!({"type": "function", "function": {"name": "plan trip", "parameters": parameters}});
    let schema = grammar_of(json!([tool]), json!("required"));
    assert_eq!(
        schema["properties"]["arguments"],
        json!({"$ref": "#/$defs/tool_0"})
    );
    let moved = &schema["$defs"]["tool_0"];
    let properties = &moved["properties"];
    assert_eq!(properties["place"]["$ref"], "#/$defs/tool_0/$defs/Place");
    assert_eq!(
        properties["enum"]["$ref"],
        "#/$defs/tool_0/definitions/Kind"
    );
    assert_eq!(properties["next"]["anyOf"][0]["$ref"], "#/$defs/tool_0");
    assert_eq!(properties["note"], parameters["properties"]["note"]);
    assert_eq!(
        properties["remote"]["$ref"],
        "https://example.com/schema.json"
    );
    assert_eq!(
        moved["$defs"]["Place"]["properties"]["inner"]["$ref"],
        "#/$defs/tool_0/$defs/Place"
    );
    assert_eq!(moved["definitions"], parameters["definitions"]);
}

#[test]
fn a_refused_schema_is_a_422_naming_the_tools() {
    let tools = checked(json!([weather(), time()]), json!("required"))
        .expect("valid")
        .expect("tools");
    let error = tools.refused("unsupported JSON schema: format \"uuid4\"");
    assert_eq!(error.status().as_u16(), 422);
    let body = error.body().error;
    assert_eq!(
        (body.param.as_deref(), body.error_type),
        (Some("tools"), "invalid_request_error")
    );
    assert_eq!(
        body.message,
        "the parameters schema of `get_weather`, `get_time` cannot be enforced: unsupported \
         JSON schema: format \"uuid4\""
    );
}
