//! "Ready" means answering, not merely existing: a shard is ready when its gRPC `Health` call
//! succeeds over its unix socket (it answers only once the model is loaded), the router when
//! `GET /health` returns 200.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferrite_router::shard_client::grpc::GrpcShardClient;
use ferrite_router::shard_client::ShardClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Pause between two probes of a process that is not ready yet.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// Longest a single probe may take (a loading shard may accept but answer slowly).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Polls the shard at `uds_path` until `Health` succeeds. Never gives up by itself: the caller
/// races it against the shard's exit and the launcher's signals.
pub async fn wait_for_shard(uds_path: &Path) {
    loop {
        if tokio::time::timeout(PROBE_TIMEOUT, shard_health(uds_path.to_path_buf()))
            .await
            .is_ok_and(|healthy| healthy)
        {
            return;
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

async fn shard_health(uds_path: PathBuf) -> bool {
    if !uds_path.exists() {
        return false;
    }
    // The router's own client (one connection attempt: the caller's loop does the retrying),
    // so "ready" means exactly what the router will see.
    match GrpcShardClient::connect(&[uds_path], Duration::ZERO).await {
        Ok(client) => client.health().await.is_ok(),
        Err(_) => false,
    }
}

/// Polls `http://host:port/health` until it answers 200.
pub async fn wait_for_router(host: &str, port: u16) {
    loop {
        if tokio::time::timeout(PROBE_TIMEOUT, router_health(host, port))
            .await
            .is_ok_and(|healthy| healthy)
        {
            return;
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

async fn router_health(host: &str, port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((host, port)).await else {
        return false;
    };
    let request = format!("GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    // The status line fits in the first read; the body does not matter.
    let mut response = [0u8; 64];
    let Ok(read_bytes) = stream.read(&mut response).await else {
        return false;
    };
    is_ok_status_line(&response[..read_bytes])
}

fn is_ok_status_line(response: &[u8]) -> bool {
    let text = String::from_utf8_lossy(response);
    let mut parts = text.split_whitespace();
    parts
        .next()
        .is_some_and(|version| version.starts_with("HTTP/"))
        && parts.next() == Some("200")
}

#[cfg(test)]
#[path = "readiness_tests.rs"]
mod tests;
