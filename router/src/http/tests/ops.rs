use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;

use super::*;
use crate::scheduler::interface::{GenerationError, GenerationEvent};
use crate::testing::fake_submitter::{reply_events, Behaviour};

#[tokio::test]
async fn info_reports_tgi_fields_and_the_limits() {
    let app = TestApp::replying();
    let (status, _, bytes) = app.get("/info").await;
    assert_eq!(status, StatusCode::OK);
    let info = json(&bytes);
    assert_eq!(info["model_id"], "tiny");
    assert_eq!(info["model_dtype"], "float32");
    assert_eq!(info["model_device_type"], "cpu");
    assert_eq!(info["max_input_tokens"], 32);
    assert_eq!(info["max_total_tokens"], 64);
    assert_eq!(info["max_concurrent_requests"], 2);
    assert_eq!(info["max_best_of"], 3);
    assert_eq!(info["max_stop_sequences"], 2);
    assert_eq!(info["max_batch_total_tokens"], 1024);
    assert_eq!(info["router"], "ferrite-router");
    assert_eq!(info["kv_num_blocks"], 64);
    assert_eq!(info["prefix_caching"], true);
    assert!(info["quantize"].is_null());
    assert_eq!(info["kv_cache_dtype"], "auto");
    assert!(info["version"].is_string());
}

#[tokio::test]
async fn metrics_count_requests_and_show_kv_gauges() {
    let app = TestApp::new(|_| FakeSubmitter::new(Behaviour::QueueFull));
    app.post("/generate", json!({"inputs": "Hi"})).await;
    app.post("/generate", json!({"inputs": ""})).await;
    let (status, headers, bytes) = app.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/plain"));
    let text = String::from_utf8(bytes.to_vec()).expect("utf-8");
    for line in [
        "tgi_request_count 2",
        "tgi_request_success 0",
        "tgi_request_failure{err=\"overloaded\"} 1",
        "tgi_request_failure{err=\"validation\"} 1",
        "ferrite_kv_blocks_total 64",
        "ferrite_kv_blocks_free 60",
        "ferrite_kv_blocks_used 4",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }

    let app = TestApp::replying();
    app.post("/generate_stream", json!({"inputs": "Hi"})).await;
    let text = String::from_utf8(app.get("/metrics").await.2.to_vec()).expect("utf-8");
    assert!(text.lines().any(|l| l == "tgi_request_success 1"), "{text}");
    assert!(
        text.lines()
            .any(|l| l == "ferrite_time_to_first_token_seconds_count 1"),
        "{text}"
    );
}

#[tokio::test]
async fn health_needs_a_real_generation_after_a_failure() {
    let shard_broken = Arc::new(AtomicBool::new(false));
    let app = TestApp::new({
        let shard_broken = Arc::clone(&shard_broken);
        move |tokenizer| {
            FakeSubmitter::new(Behaviour::Script(Box::new(move |request| {
                if shard_broken.load(Ordering::SeqCst) {
                    vec![GenerationEvent::Error(GenerationError::Shard(
                        "device lost".into(),
                    ))]
                } else {
                    reply_events(&tokenizer, REPLY, request)
                }
            })))
        }
    });
    // The first check runs a one-token generation.
    assert_eq!(app.get("/health").await.0, StatusCode::OK);
    let probes = app.submitter.submitted();
    assert_eq!(probes.len(), 1);
    assert_eq!(
        probes[0]
            .parameters
            .stopping
            .as_ref()
            .map(|s| s.max_new_tokens),
        Some(1)
    );
    // While generations succeed, checks are free.
    assert_eq!(app.get("/health").await.0, StatusCode::OK);
    assert_eq!(app.submitter.submitted().len(), 1);

    // A request fails in the shard: the next check probes again, and fails while broken.
    shard_broken.store(true, Ordering::SeqCst);
    let (status, _, _) = app.post("/generate", json!({"inputs": "Hi"})).await;
    assert_eq!(status.as_u16(), 424);
    let (status, _, bytes) = app.get("/health").await;
    assert_error_shape(status, &bytes, 503, "healthcheck");
    assert_eq!(app.submitter.submitted().len(), 3);

    shard_broken.store(false, Ordering::SeqCst);
    assert_eq!(app.get("/health").await.0, StatusCode::OK);
    assert_eq!(app.submitter.submitted().len(), 4);
}

#[tokio::test]
async fn openapi_document_lists_the_routes_and_schemas() {
    let app = TestApp::replying();
    let (status, _, bytes) = app.get("/api-doc/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let document = json(&bytes);
    assert!(document["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.")));
    for path in [
        "/",
        "/generate",
        "/generate_stream",
        "/tokenize",
        "/health",
        "/info",
        "/metrics",
    ] {
        assert!(document["paths"].get(path).is_some(), "missing {path}");
    }
    for schema in [
        "GenerateParameters",
        "StreamResponse",
        "ErrorResponse",
        "Info",
    ] {
        assert!(
            document["components"]["schemas"].get(schema).is_some(),
            "missing {schema}"
        );
    }
}

#[tokio::test]
async fn docs_serve_swagger_ui_over_the_openapi_document_from_the_router_itself() {
    let app = TestApp::replying();
    let (status, headers, bytes) = app.get("/docs/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/html"));
    let page = String::from_utf8_lossy(&bytes);
    assert!(page.contains("swagger-ui"), "{page}");
    assert!(
        !page.contains("https://"),
        "no assets from the internet: {page}"
    );
    let (status, _, bytes) = app.get("/docs/swagger-initializer.js").await;
    assert_eq!(status, StatusCode::OK);
    let initializer = String::from_utf8_lossy(&bytes);
    assert!(
        initializer.contains("/api-doc/openapi.json"),
        "{initializer}"
    );
    for asset in ["/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"] {
        let (status, _, bytes) = app.get(asset).await;
        assert_eq!(status, StatusCode::OK, "{asset}");
        assert!(bytes.len() > 10_000, "{asset} is the real file");
    }
    let (status, _, _) = app.get("/docs").await;
    assert!(status.is_success() || status.is_redirection(), "{status}");
}

#[tokio::test]
async fn openapi_document_lists_the_tgi_compatibility_routes() {
    let app = TestApp::replying();
    let (_, _, bytes) = app.get("/api-doc/openapi.json").await;
    let document = json(&bytes);
    assert!(
        document["paths"]["/docs/"]["get"].is_object(),
        "the Swagger UI page"
    );
    for path in ["/chat_tokenize", "/invocations"] {
        let operation = &document["paths"][path]["post"];
        assert!(
            operation["requestBody"].is_object(),
            "{path} documents its body"
        );
        assert!(
            operation["responses"]["422"].is_object(),
            "{path} documents 422"
        );
    }
    for schema in [
        "ChatTokenizeResponse",
        "InvocationRequest",
        "InvocationResponse",
        "InvocationError",
    ] {
        assert!(
            document["components"]["schemas"].get(schema).is_some(),
            "missing {schema}"
        );
    }
    assert_eq!(
        document["paths"]["/chat_tokenize"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["$ref"],
        "#/components/schemas/ChatCompletionRequest"
    );
    let invocation = &document["components"]["schemas"]["InvocationRequest"];
    assert_eq!(
        invocation["oneOf"].as_array().map(Vec::len),
        Some(3),
        "{invocation}"
    );
}
