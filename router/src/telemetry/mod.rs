//! Logs and OpenTelemetry traces (DESIGN.md "metrics, tracing").
//!
//! One `tracing` subscriber serves both: the fmt layer writes log lines (text or JSON, filtered
//! by `--log-level` / `RUST_LOG`), and, only when `--otlp-endpoint` is set, a
//! tracing-opentelemetry layer turns the router's spans into OTLP spans exported over gRPC by a
//! batch span processor. Without an endpoint no exporter, processor or provider is built and
//! nothing leaves the process.
//!
//! The spans (see `request_span.rs`, `sequence_trace.rs`, `step_trace.rs`):
//! `POST /generate` (per request, parent = the client's `traceparent`)
//!   ├─ validation
//!   ├─ queue ─ prefill ─ decode          (per scheduled sequence; again after a preemption)
//!   │            └─ shard_step           (per step, under the oldest traced request in it,
//!   │                 └─ (shard spans)    linked to the others; context sent in gRPC metadata)

mod exporter;
pub mod propagation;
pub mod request_log;
pub mod request_span;
pub mod sequence_trace;
pub mod step_trace;
#[cfg(test)]
pub(crate) mod test_exporter;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Spans of this crate (and nothing else: no dependency's internals) become OTLP spans.
const TRACED_TARGET: &str = "ferrite_router";

/// What `init` needs, taken from the router's flags.
#[derive(Debug, Clone, Default)]
pub struct TelemetrySettings {
    pub json_output: bool,
    /// tracing-subscriber EnvFilter directives (`--log-level`, or `RUST_LOG` when set).
    pub log_filter: String,
    pub otlp_endpoint: Option<String>,
    pub otlp_service_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP exporter for {endpoint}: {message}")]
    Exporter { endpoint: String, message: String },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Keeps the tracer provider alive; `shutdown` flushes the spans still queued.
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports what the batch processor still holds, then stops it. Call once, at exit, on a
    /// thread outside the runtime (the export itself runs on the runtime, see exporter.rs).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(error) = provider.shutdown() {
                // The subscriber may be gone by now: stderr is the one place left.
                eprintln!("flushing OpenTelemetry spans failed: {error}");
            }
        }
    }
}

/// Installs the global subscriber. Must run inside the tokio runtime that will also carry the
/// exporter's gRPC connection.
pub fn init(settings: &TelemetrySettings) -> Result<TelemetryGuard, TelemetryError> {
    let log_filter = EnvFilter::try_new(&settings.log_filter)
        .unwrap_or_else(|_| EnvFilter::new(LevelFilter::INFO.to_string()));
    // Colour only on a terminal: under the launcher the lines go through a pipe into its log.
    let to_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(to_terminal);
    let fmt = if settings.json_output {
        fmt.json().flatten_event(true).boxed()
    } else {
        fmt.boxed()
    };
    let (otel, provider) = match &settings.otlp_endpoint {
        Some(endpoint) => {
            let provider = build_provider(endpoint, &settings.otlp_service_name)?;
            let tracer = provider.tracer("ferrite-router");
            // Its own filter: a quiet --log-level must not silence the traces.
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(Targets::new().with_target(TRACED_TARGET, LevelFilter::INFO));
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(log_filter))
        .with(otel)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(TelemetryGuard { provider })
}

fn build_provider(endpoint: &str, service_name: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let otlp = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|error| TelemetryError::Exporter {
            endpoint: endpoint.to_string(),
            message: error.to_string(),
        })?;
    let exporter = exporter::RuntimeSpanExporter::new(otlp, tokio::runtime::Handle::current());
    let resource = Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", service_name.to_string()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).build())
        .with_resource(resource)
        .build())
}
