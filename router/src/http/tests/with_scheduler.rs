//! The HTTP layer over the real scheduler and the scheduler's in-process fake shard (which
//! answers token `last + 1` and checks every block table it gets): the two halves of the
//! router together, without a Python shard.

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

use super::*;
use crate::scheduler::fake_shard::{expected_tokens, FakeShard, FakeShardConfig};
use crate::scheduler::interface::SchedulerConfig;
use crate::scheduler::spawn_scheduler;
use crate::testing::tiny_tokenizer::{special_id, EOS};

/// Guards against a hang; not a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(10);
const NUM_BLOCKS: usize = 64;

struct Stack {
    router: Router,
    tokenizer: Arc<TextTokenizer>,
    shard: Arc<FakeShard>,
}

impl Stack {
    async fn post(&self, path: &str, body: Value) -> (StatusCode, HeaderMap, Bytes) {
        send(&self.router, post(path, &body.to_string())).await
    }

    async fn metrics(&self) -> String {
        String::from_utf8(send(&self.router, get("/metrics")).await.2.to_vec()).expect("utf-8")
    }
}

fn stack(step_delay: Duration) -> Stack {
    let tokenizer = Arc::new(byte_level_tokenizer());
    let shard = Arc::new(FakeShard::new(FakeShardConfig {
        vocab_size: tokenizer.inner().get_vocab_size(true) as u32,
        eos_token_ids: vec![special_id(&tokenizer, EOS)],
        block_size: 4,
        num_blocks: NUM_BLOCKS,
        poison_token_id: None,
        step_delay,
    }));
    let scheduler = spawn_scheduler(
        Arc::clone(&shard),
        SchedulerConfig {
            block_size: 4,
            num_blocks: NUM_BLOCKS,
            max_batch_prefill_tokens: 16,
            max_batch_total_tokens: 4 * NUM_BLOCKS,
            max_batch_size: 8,
            max_total_tokens: 64,
            max_waiting_requests: 8,
            prefix_caching: true,
            num_speculative_tokens: 0,
            max_loras_per_batch: 8,
            async_scheduling: true,
        },
    );
    let state = test_state(&test_config(), Arc::clone(&tokenizer), Arc::new(scheduler));
    Stack {
        router: app(state),
        tokenizer,
        shard,
    }
}

/// The text the fake shard produces after `prompt` (ids `last + 1`, ...).
fn expected_text(tokenizer: &TextTokenizer, prompt: &str, max_new_tokens: usize) -> String {
    let prompt_ids = tokenizer
        .encode(prompt, None)
        .expect("encode")
        .get_ids()
        .to_vec();
    let vocab_size = tokenizer.inner().get_vocab_size(true) as u32;
    let ids = expected_tokens(&prompt_ids, max_new_tokens, vocab_size, &[]);
    tokenizer.decode(&ids).expect("decode")
}

/// Polls /metrics until every KV block is free again.
async fn wait_for_all_blocks_free(stack: &Stack) -> String {
    let free_line = format!("ferrite_kv_blocks_free {NUM_BLOCKS}");
    let poll = async {
        loop {
            let text = stack.metrics().await;
            if text.lines().any(|line| line == free_line)
                && text.lines().any(|l| l == "tgi_batch_current_size 0")
            {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(HANG_GUARD, poll)
        .await
        .expect("all KV blocks come back")
}

#[tokio::test]
async fn generate_equals_the_concatenated_stream() {
    let stack = stack(Duration::ZERO);
    // "x" is byte 0x78: the fake continues with "yz{|}~".
    let body = json!({"inputs": "x", "parameters": {"max_new_tokens": 6, "details": true}});
    let (status, _, generated) = stack.post("/generate", body.clone()).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&generated)
    );
    let generated = json(&generated);
    assert_eq!(
        generated["generated_text"],
        expected_text(&stack.tokenizer, "x", 6)
    );
    assert_eq!(generated["generated_text"], "yz{|}~");
    assert_eq!(generated["details"]["finish_reason"], "length");

    let (status, _, streamed) = stack.post("/generate_stream", body).await;
    assert_eq!(status, StatusCode::OK);
    let events = sse_events(&streamed);
    let concatenated: String = events
        .iter()
        .map(|e| e["token"]["text"].as_str().expect("text"))
        .collect();
    assert_eq!(concatenated, "yz{|}~");
    assert_eq!(events.last().expect("last")["generated_text"], "yz{|}~");
    assert!(
        stack.shard.violations().is_empty(),
        "{:?}",
        stack.shard.violations()
    );
}

#[tokio::test]
async fn a_client_that_disconnects_frees_its_blocks() {
    let stack = stack(Duration::from_millis(2));
    let request = post(
        "/generate_stream",
        r#"{"inputs": "x", "parameters": {"max_new_tokens": 60}}"#,
    );
    let response = stack
        .router
        .clone()
        .oneshot(request)
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    let first = body.next().await.expect("first event").expect("bytes");
    assert!(first.starts_with(b"data:{\"index\":0"));
    drop(body);

    let metrics = wait_for_all_blocks_free(&stack).await;
    assert!(
        metrics.lines().any(|l| l == "ferrite_kv_blocks_used 0"),
        "{metrics}"
    );
    assert_eq!(
        stack.shard.num_live_requests(),
        0,
        "the shard was told to forget the request"
    );
    assert!(
        stack.shard.violations().is_empty(),
        "{:?}",
        stack.shard.violations()
    );

    // The next request is served normally.
    let (status, _, bytes) = stack
        .post(
            "/generate",
            json!({"inputs": "x", "parameters": {"max_new_tokens": 3}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&bytes)["generated_text"], "yz{");
}

#[tokio::test]
async fn a_stop_sequence_cancels_the_rest_of_the_generation() {
    let stack = stack(Duration::from_millis(1));
    let body = json!({"inputs": "x", "parameters": {"max_new_tokens": 60, "stop": ["{|"], "details": true}});
    let (status, _, bytes) = stack.post("/generate", body).await;
    assert_eq!(status, StatusCode::OK);
    let body = json(&bytes);
    assert_eq!(body["generated_text"], "yz{|");
    assert_eq!(body["details"]["finish_reason"], "stop_sequence");
    assert_eq!(body["details"]["generated_tokens"], 4);
    wait_for_all_blocks_free(&stack).await;
    assert_eq!(stack.shard.num_live_requests(), 0);
}
