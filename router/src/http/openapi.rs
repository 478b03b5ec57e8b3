//! The OpenAPI document, derived from the DTOs and the handlers' annotations.

use axum::Json;
use utoipa::OpenApi;

use crate::api::chat_tokenize::{ChatMessageDoc, ChatTokenizeRequest, ChatTokenizeResponse};
use crate::api::error::ErrorResponse;
use crate::api::generate::{CompatGenerateRequest, GenerateParameters, GenerateRequest};
use crate::api::info::Info;
use crate::api::response::{
    BestOfSequence, Details, FinishReason, GenerateResponse, PrefillToken, StreamDetails,
    StreamResponse, Token,
};
use crate::api::tokenize::SimpleToken;

use super::invocations::{ChatInvocation, CompletionInvocation, InvocationRequest};

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
        super::chat_tokenize::chat_tokenize,
        super::invocations::invocations,
        super::ops::health,
        super::ops::info,
        super::ops::metrics,
    ),
    components(schemas(
        GenerateRequest, CompatGenerateRequest, GenerateParameters, GenerateResponse, Details,
        BestOfSequence, PrefillToken, Token, FinishReason, StreamResponse, StreamDetails,
        SimpleToken, Info, ErrorResponse, ChatTokenizeRequest, ChatTokenizeResponse,
        ChatMessageDoc, InvocationRequest, ChatInvocation, CompletionInvocation
    )),
    tags((name = "Text Generation Inference", description = "TGI-compatible text generation"))
)]
pub struct ApiDoc;

pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
