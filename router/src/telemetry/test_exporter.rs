//! Test support: a subscriber whose spans are exported into memory, synchronously.

use std::sync::{Arc, Mutex};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::layer::SubscriberExt;

#[derive(Debug, Clone, Default)]
pub struct RecordingExporter {
    spans: Arc<Mutex<Vec<SpanData>>>,
}

impl RecordingExporter {
    pub fn finished_spans(&self) -> Vec<SpanData> {
        self.spans
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl SpanExporter for RecordingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.spans
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend(batch);
        Ok(())
    }
}

/// A subscriber that exports every span into the returned exporter as soon as it ends.
pub fn recording_subscriber() -> (impl tracing::Subscriber + Send + Sync, RecordingExporter) {
    let exporter = RecordingExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    (subscriber, exporter)
}

/// Runs `work` under `recording_subscriber()`.
pub fn with_recorded_spans(work: impl FnOnce()) -> RecordingExporter {
    let (_guard, exporter) = record_spans_on_this_thread();
    work();
    exporter
}

/// Makes `recording_subscriber()` this thread's default until the guard drops (for async tests
/// on a current-thread runtime).
pub fn record_spans_on_this_thread() -> (tracing::subscriber::DefaultGuard, RecordingExporter) {
    let (subscriber, exporter) = recording_subscriber();
    let guard = tracing::subscriber::set_default(subscriber);
    // Tests on other threads (without this subscriber) may have registered a callsite while
    // this one was being set, caching "never" for it; recompute every callsite's interest now
    // that this subscriber is known, so its spans are not silently disabled.
    tracing::callsite::rebuild_interest_cache();
    (guard, exporter)
}
