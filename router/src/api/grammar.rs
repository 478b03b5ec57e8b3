//! TGI's `parameters.grammar`: structured output, as `{"type": "json", "value": <schema>}` or
//! `{"type": "regex", "value": "..."}`.

use serde::Deserialize;
use utoipa::ToSchema;

use crate::proto;

#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
#[serde(tag = "type", content = "value")]
pub enum GrammarSpec {
    /// Output is one JSON value valid against this JSON schema (an object, or its JSON text).
    #[serde(rename = "json", alias = "json_schema")]
    #[schema(value_type = Object)]
    Json(serde_json::Value),
    /// Output matches this regular expression as a whole.
    #[serde(rename = "regex")]
    Regex(String),
}

impl GrammarSpec {
    /// The shard's form: a schema given as JSON text is passed as that text.
    pub fn to_proto(&self) -> proto::Grammar {
        match self {
            Self::Json(serde_json::Value::String(text)) => {
                grammar(proto::GrammarKind::JsonSchema, text.clone())
            }
            Self::Json(schema) => grammar(proto::GrammarKind::JsonSchema, schema.to_string()),
            Self::Regex(regex) => grammar(proto::GrammarKind::Regex, regex.clone()),
        }
    }
}

fn grammar(kind: proto::GrammarKind, value: String) -> proto::Grammar {
    proto::Grammar {
        kind: kind as i32,
        value,
    }
}
