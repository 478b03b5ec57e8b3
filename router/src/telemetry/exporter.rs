//! The OTLP exporter, driven on the router's tokio runtime.
//!
//! The SDK's batch span processor exports from its own OS thread by polling the export future
//! with a plain executor, while tonic's channel needs a tokio reactor (its connection task,
//! timers). Spawning each export onto the runtime and awaiting the join handle (which any
//! executor can await) gives the export the reactor it needs, from whatever thread calls.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tokio::runtime::Handle;

#[derive(Debug)]
pub struct RuntimeSpanExporter<E> {
    inner: Arc<E>,
    runtime: Handle,
}

impl<E> RuntimeSpanExporter<E> {
    pub fn new(inner: E, runtime: Handle) -> Self {
        Self {
            inner: Arc::new(inner),
            runtime,
        }
    }
}

impl<E: SpanExporter + 'static> SpanExporter for RuntimeSpanExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let inner = Arc::clone(&self.inner);
        self.runtime
            .spawn(async move { inner.export(batch).await })
            .await
            .unwrap_or_else(|error| Err(OTelSdkError::InternalFailure(error.to_string())))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called while the provider is built, before the exporter is shared with any export.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records how many spans it got and whether a tokio reactor was there to export them.
    #[derive(Debug, Default)]
    struct NeedsRuntime {
        exported: Mutex<Vec<(usize, bool)>>,
    }

    impl SpanExporter for NeedsRuntime {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let has_runtime = Handle::try_current().is_ok();
            self.exported
                .lock()
                .map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?
                .push((batch.len(), has_runtime));
            Ok(())
        }
    }

    #[test]
    fn exports_from_a_plain_thread_run_on_the_runtime() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let exporter = RuntimeSpanExporter::new(NeedsRuntime::default(), runtime.handle().clone());
        // As the batch processor's thread does: a plain executor, no tokio context.
        let result = std::thread::spawn(move || {
            let result = futures::executor::block_on(exporter.export(Vec::new()));
            (result, exporter)
        })
        .join()
        .expect("thread");
        let (result, exporter) = result;
        assert!(result.is_ok());
        let exported = exporter.inner.exported.lock().expect("lock").clone();
        assert_eq!(exported, vec![(0, true)]);
    }
}
