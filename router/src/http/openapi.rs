//! The OpenAPI document, derived from the DTOs and the handlers' annotations.
//!
//! Streamed responses are described per event, as OpenAPI 3.2 describes `text/event-stream`:
//! each event is an object whose `data` string holds one JSON document of the route's chunk
//! schema (`contentMediaType` + `contentSchema`), rather than as if the whole body were one
//! chunk.

use axum::Json;
use serde_json::{json, Value};
use utoipa::OpenApi;

use crate::api::error::ErrorResponse;
use crate::api::generate::{CompatGenerateRequest, GenerateParameters, GenerateRequest};
use crate::api::info::Info;
use crate::api::response::{
    BestOfSequence, Details, FinishReason, GenerateResponse, PrefillToken, StreamDetails,
    StreamResponse, Token,
};
use crate::api::tokenize::SimpleToken;

const EVENT_STREAM: &str = "text/event-stream";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ferrite",
        description = "LLM inference server with Text Generation Inference's API",
        license(name = "Apache 2.0", url = "https://www.apache.org/licenses/LICENSE-2.0")
    ),
    paths(
        super::compat::compat_generate,
        super::generate::generate,
        super::stream::generate_stream,
        super::tokenize::tokenize,
        super::ops::health,
        super::ops::info,
        super::ops::metrics,
        crate::openai::chat::chat_completions,
        crate::openai::completions::completions,
        crate::openai::models::list_models,
        crate::openai::models::get_model,
    ),
    components(schemas(
        GenerateRequest, CompatGenerateRequest, GenerateParameters, GenerateResponse, Details,
        BestOfSequence, PrefillToken, Token, FinishReason, StreamResponse, StreamDetails,
        SimpleToken, Info, ErrorResponse
    )),
    tags(
        (name = "Text Generation Inference", description = "TGI-compatible text generation"),
        (name = "OpenAI", description = "OpenAI-compatible chat and text completions"),
    )
)]
pub struct ApiDoc;

/// The document as served at `/api-doc/openapi.json`.
pub fn document() -> Value {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|error| {
        json!({"openapi": "3.1.0", "info": {"title": "ferrite", "description": error.to_string()}})
    });
    describe_event_streams(&mut document);
    document
}

pub async fn openapi_json() -> Json<Value> {
    Json(document())
}

/// Rewrites every `text/event-stream` schema S into "events whose `data` is JSON of S".
fn describe_event_streams(document: &mut Value) {
    let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    let operations = paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|path| path.values_mut());
    for operation in operations {
        let Some(responses) = operation
            .get_mut("responses")
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        for response in responses.values_mut() {
            let Some(stream) =
                response.pointer_mut(&format!("/content/{}", EVENT_STREAM.replace('/', "~1")))
            else {
                continue;
            };
            if let Some(chunk_schema) = stream.get("schema").cloned() {
                stream["schema"] = json!({
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "data": {
                            "type": "string",
                            "contentMediaType": "application/json",
                            "contentSchema": chunk_schema,
                        },
                        "event": {"type": "string"},
                        "id": {"type": "string"},
                    },
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_responses_are_described_per_event() {
        let document = document();
        let stream = &document["paths"]["/generate_stream"]["post"]["responses"]["200"]["content"]
            [EVENT_STREAM]["schema"];
        assert_eq!(stream["required"], json!(["data"]));
        assert_eq!(
            stream["properties"]["data"]["contentSchema"]["$ref"],
            "#/components/schemas/StreamResponse"
        );
        assert!(document["paths"]["/v1/chat/completions"]["post"].is_object());
    }
}
