//! OpenAI's `response_format` as a grammar: `text` is no constraint, `json_object` any JSON
//! object, `json_schema` the given schema (ferrite always enforces it, so `strict` changes
//! nothing: output that the grammar forces is valid whether or not strict was asked for).

use serde_json::Value;

use crate::proto;

use super::error::OpenAiError;

const PARAM: &str = "response_format";

/// The grammar `response_format` asks for; None for `text` or no format.
pub fn response_grammar(format: Option<&Value>) -> Result<Option<proto::Grammar>, OpenAiError> {
    let Some(format) = format.filter(|format| !format.is_null()) else {
        return Ok(None);
    };
    let kind = format.get("type").and_then(Value::as_str);
    let schema = match kind {
        Some("text") => return Ok(None),
        Some("json_object") => serde_json::json!({"type": "object"}),
        Some("json_schema") => json_schema(format)?,
        _ => {
            let message = "`response_format.type` must be \"text\", \"json_object\" or \
                           \"json_schema\"";
            return Err(OpenAiError::invalid(PARAM, message));
        }
    };
    Ok(Some(proto::Grammar {
        kind: proto::GrammarKind::JsonSchema as i32,
        value: schema.to_string(),
    }))
}

fn json_schema(format: &Value) -> Result<Value, OpenAiError> {
    let Some(spec) = format.get("json_schema").filter(|spec| spec.is_object()) else {
        let message = "`response_format.json_schema` must be an object with `name` and `schema`";
        return Err(OpenAiError::invalid(PARAM, message));
    };
    match spec.get("schema") {
        None | Some(Value::Null) => Ok(serde_json::json!({"type": "object"})),
        Some(schema @ (Value::Object(_) | Value::Bool(_))) => Ok(schema.clone()),
        Some(_) => Err(OpenAiError::invalid(
            PARAM,
            "`response_format.json_schema.schema` must be a JSON schema object",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_become_grammars() {
        assert_eq!(response_grammar(None).expect("valid"), None);
        let text = serde_json::json!({"type": "text"});
        assert_eq!(response_grammar(Some(&text)).expect("valid"), None);
        let object = serde_json::json!({"type": "json_object"});
        let grammar = response_grammar(Some(&object))
            .expect("valid")
            .expect("valid");
        assert_eq!(grammar.value, r#"{"type":"object"}"#);
        let schema =
            serde_json::json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let format = serde_json::json!({"type": "json_schema",
            "json_schema": {"name": "A", "schema": schema, "strict": true}});
        let grammar = response_grammar(Some(&format))
            .expect("valid")
            .expect("valid");
        assert_eq!(
            serde_json::from_str::<Value>(&grammar.value).expect("valid"),
            schema
        );
    }

    #[test]
    fn malformed_formats_name_the_parameter() {
        for format in [
            serde_json::json!({"type": "xml"}),
            serde_json::json!("json"),
            serde_json::json!({"type": "json_schema"}),
            serde_json::json!({"type": "json_schema", "json_schema": {"schema": 3}}),
        ] {
            let error = response_grammar(Some(&format)).expect_err("refused");
            assert!(
                format!("{error:?}").contains("response_format"),
                "{error:?}"
            );
        }
    }
}
