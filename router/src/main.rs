//! `ferrite-router`: see `server::run`.

use std::sync::Arc;

use clap::Parser;
use ferrite_router::config::RouterArgs;
use ferrite_router::scheduler::interface::{RequestSubmitter, SchedulerConfig};
use ferrite_router::shard_client::grpc::GrpcShardClient;
use ferrite_router::{scheduler, server};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = RouterArgs::parse();
    server::init_tracing(args.json_output, &args.log_filter);
    server::run(args, start_scheduler).await
}

/// The one place the binary creates the scheduler.
fn start_scheduler(shard: Arc<GrpcShardClient>, config: SchedulerConfig) -> impl RequestSubmitter {
    scheduler::spawn_scheduler(shard, config)
}
