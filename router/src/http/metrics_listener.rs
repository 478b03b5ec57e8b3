//! `--prometheus-port`: a second listener that serves `/metrics` and nothing else, so a
//! scraper can be let in on a port that does not expose the generation API (TGI's flag).

use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{ops, AppState};

/// The metrics-only routes.
pub fn metrics_app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(ops::metrics))
        .with_state(state)
}

/// Binds `hostname:port` and serves the metrics routes on a task (ended by aborting the
/// returned handle). A port that cannot be bound fails start-up, naming it.
pub async fn spawn(hostname: &str, port: u16, state: AppState) -> anyhow::Result<JoinHandle<()>> {
    use anyhow::Context;

    let listener = TcpListener::bind((hostname, port))
        .await
        .with_context(|| format!("cannot listen on {hostname}:{port} (--prometheus-port)"))?;
    tracing::info!(address = %listener.local_addr()?, "serving /metrics for Prometheus");
    let app = metrics_app(state);
    Ok(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "the --prometheus-port listener stopped");
        }
    }))
}
