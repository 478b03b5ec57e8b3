//! The router's own cost of tracing, per step, with nothing else in the way (issue 8 "Measure").
//!
//!     cargo run --release -p ferrite-router --example tracing_overhead
//!
//! The real scheduler drives the in-process fake shard, whose steps take no time, so a step
//! costs only the router's work: planning, KV accounting, events, and (traced) the phase and
//! step spans. Rounds alternate between a plain subscriber (logs only, as without
//! `--otlp-endpoint`) and one that also exports every span through the SDK's batch span
//! processor (to a sink that only counts them). Every request has a request span, as the HTTP
//! middleware gives it. Prints the median wall time per step of each, and the difference: what
//! tracing adds to every step, to compare with a real step's forward time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrite_router::proto;
use ferrite_router::scheduler::fake_shard::{FakeShard, FakeShardConfig};
use ferrite_router::scheduler::interface::{
    GenerationEvent, GenerationRequest, RequestSubmitter, SchedulerConfig,
};
use ferrite_router::scheduler::spawn_scheduler;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

const NUM_REQUESTS: usize = 64;
const PROMPT_TOKENS: usize = 48;
const NEW_TOKENS: u32 = 64;
const ROUNDS: usize = 7;

/// Counts what it is given; exports nothing.
#[derive(Debug, Clone, Default)]
struct CountingSink(Arc<AtomicUsize>);

impl SpanExporter for CountingSink {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.fetch_add(batch.len(), Ordering::Relaxed);
        Ok(())
    }
}

fn request(index: usize) -> GenerationRequest {
    let input_ids = (0..PROMPT_TOKENS as u32)
        .map(|offset| (index as u32 * 7 + offset) % 900)
        .collect();
    GenerationRequest {
        input_ids,
        parameters: proto::RequestParameters {
            stopping: Some(proto::StoppingParameters {
                max_new_tokens: NEW_TOKENS,
                ignore_eos: true,
            }),
            ..Default::default()
        },
        received_at: Instant::now(),
        deadline: None,
        span: tracing::info_span!("request"),
    }
}

/// Runs one round of NUM_REQUESTS concurrent requests; (wall time, steps).
async fn round() -> (Duration, usize) {
    let shard = Arc::new(FakeShard::new(FakeShardConfig {
        vocab_size: 1000,
        eos_token_ids: vec![999],
        block_size: 16,
        num_blocks: 4096,
        poison_token_id: None,
        step_delay: Duration::ZERO,
    }));
    let config = SchedulerConfig {
        block_size: 16,
        num_blocks: 4096,
        max_batch_prefill_tokens: 1024,
        max_batch_total_tokens: 4096 * 16,
        max_batch_size: NUM_REQUESTS,
        max_total_tokens: 64,
        max_waiting_requests: NUM_REQUESTS,
        prefix_caching: true,
        num_speculative_tokens: 0,
        max_loras_per_batch: 8,
        async_scheduling: true,
    };
    let handle = spawn_scheduler(shard.clone(), config);
    let started = Instant::now();
    let receivers: Vec<_> = (0..NUM_REQUESTS)
        .map(|index| handle.submit(request(index)).expect("admitted"))
        .collect();
    for mut receiver in receivers {
        while let Some(event) = receiver.recv().await {
            if let GenerationEvent::Error(error) = event {
                panic!("request failed: {error}");
            }
        }
    }
    (started.elapsed(), shard.steps().len())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let logs = || {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::sink)
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    };
    let exported = CountingSink::default();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exported.clone()).build())
        .build();
    let mut ns_per_step = [Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for (traced, results) in ns_per_step.iter_mut().enumerate() {
            let (wall, steps) = if traced == 1 {
                let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("bench"));
                let subscriber = tracing_subscriber::registry().with(logs()).with(otel);
                let _default = tracing::subscriber::set_default(subscriber);
                runtime.block_on(round())
            } else {
                let subscriber = tracing_subscriber::registry().with(logs());
                let _default = tracing::subscriber::set_default(subscriber);
                runtime.block_on(round())
            };
            results.push(wall.as_nanos() as f64 / steps as f64);
        }
    }
    let _ = provider.shutdown();
    let [off, on] = ns_per_step.map(median);
    println!(
        "{NUM_REQUESTS} requests x {NEW_TOKENS} tokens, {ROUNDS} rounds each; spans exported: {}",
        exported.0.load(Ordering::Relaxed)
    );
    println!("| tracing | router µs / step (median) |");
    println!("| --- | --- |");
    println!("| off | {:.1} |", off / 1e3);
    println!(
        "| on, every request traced and exported | {:.1} |",
        on / 1e3
    );
    println!("| added by tracing | {:.1} |", (on - off) / 1e3);
}
