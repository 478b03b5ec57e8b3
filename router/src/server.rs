//! Start-up and serving: connect to the shards, handshake (Info, Clear, Warmup), derive the
//! configuration, start the scheduler, serve HTTP until SIGINT / SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::{self, RouterArgs, RouterConfig};
use crate::http::{app, AppState};
use crate::scheduler::interface::{RequestSubmitter, SchedulerConfig};
use crate::shard_client::grpc::GrpcShardClient;
use crate::shard_client::ShardClient;
use crate::telemetry::{self, TelemetrySettings};
use crate::tokenizer::TextTokenizer;

/// Runs the router. `start_scheduler` creates the scheduler over the connected shards (a
/// parameter so this function does not depend on the scheduler's construction).
pub async fn run<S, F>(args: RouterArgs, start_scheduler: F) -> anyhow::Result<()>
where
    F: FnOnce(Arc<GrpcShardClient>, SchedulerConfig) -> S,
    S: RequestSubmitter,
{
    let tokenizer = Arc::new(TextTokenizer::from_dir(&args.tokenizer_dir)?);
    let connect_timeout = Duration::from_secs(args.shard_connect_timeout_s);
    // Node 0's sockets; ranks on other nodes (multi-node) are found through rank 0's Info.
    let shard = GrpcShardClient::connect_group(&args.shard_uds_paths, connect_timeout).await?;
    let config = handshake(&args, &shard).await?;
    let shard = Arc::new(shard);
    // Grammars compile through their own calls beside the scheduler's steps (see
    // validation/grammar.rs); the clone shares the channels.
    let grammars = Arc::new(GrpcShardClient::clone(&shard));
    let submitter = start_scheduler(shard, config.scheduler_config());
    let state = AppState::with_grammars(&config, tokenizer, Arc::new(submitter), grammars);
    let metrics_listener = match config.server.prometheus_port {
        Some(port) => Some(
            crate::http::metrics_listener::spawn(&config.server.hostname, port, state.clone())
                .await?,
        ),
        None => None,
    };

    let address = (config.server.hostname.as_str(), config.server.port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {}:{}", address.0, address.1))?;
    tracing::info!(address = %listener.local_addr()?, "ferrite-router serving");
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    if let Some(metrics_listener) = metrics_listener {
        metrics_listener.abort();
    }
    Ok(())
}

/// Info, Clear (forget requests of a previous router), Warmup, then the final limits.
async fn handshake(args: &RouterArgs, shard: &GrpcShardClient) -> anyhow::Result<RouterConfig> {
    let info = shard.info().await.context("shard Info failed")?;
    tracing::info!(model = %info.model_id, dtype = %info.dtype, device = %info.device, ranks = shard.num_ranks(), "shard ready");
    let plan = config::plan_warmup(args, &info)?;
    shard.clear().await.context("shard Clear failed")?;
    let warmup = shard
        .warmup(plan.request())
        .await
        .context("shard Warmup failed")?;
    let config = config::resolve(args, &info, &plan, &warmup)?;
    tracing::info!(
        num_blocks = config.batching.num_blocks,
        block_size = config.model.block_size,
        max_input_tokens = config.limits.max_input_tokens,
        max_total_tokens = config.limits.max_total_tokens,
        max_batch_total_tokens = config.batching.max_batch_total_tokens,
        max_batch_prefill_tokens = config.batching.max_batch_prefill_tokens,
        "limits"
    );
    Ok(config)
}

async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

/// The `ferrite-router` program: parse flags, start logs and traces, serve until shut down,
/// then flush the spans still queued.
pub fn main_from_args() -> anyhow::Result<()> {
    use clap::Parser;

    let args = RouterArgs::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let settings = TelemetrySettings {
        json_output: args.json_output,
        log_filter: args.effective_log_filter(),
        otlp_endpoint: args.otlp_endpoint.clone(),
        otlp_service_name: args.otlp_service_name.clone(),
    };
    // Inside the runtime: the OTLP exporter's gRPC channel lives on it.
    let telemetry = runtime.block_on(async { telemetry::init(&settings) })?;
    if let Some(endpoint) = &settings.otlp_endpoint {
        tracing::info!(%endpoint, service_name = %settings.otlp_service_name, "exporting traces");
    }
    let result = runtime.block_on(run(args, start_scheduler));
    telemetry.shutdown();
    result
}

/// The one place the binary creates the scheduler.
fn start_scheduler(shard: Arc<GrpcShardClient>, config: SchedulerConfig) -> impl RequestSubmitter {
    crate::scheduler::spawn_scheduler(shard, config)
}
