//! The real `ShardClient`: gRPC over unix sockets, one channel per rank. Every call goes to all
//! ranks at once (tensor-parallel ranks must run the same step together); rank 0's answer is
//! returned, and any rank's failure fails the call.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::join_all;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

use crate::proto;
use crate::proto::shard_client::ShardClient as ShardStub;
use crate::telemetry::propagation::traced_request;

use super::{ShardClient, ShardError, ShardResult};

/// Step requests and answers (prompt logprobs, top tokens of large batches) can exceed tonic's
/// 4 MiB default.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
const CONNECT_RETRY_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct GrpcShardClient {
    /// One stub per rank, rank 0 first.
    ranks: Vec<ShardStub<Channel>>,
}

impl GrpcShardClient {
    /// Connects to every rank's socket, retrying each until `timeout` has passed (shards
    /// create their sockets only once the model is loaded).
    pub async fn connect(socket_paths: &[PathBuf], timeout: Duration) -> ShardResult<Self> {
        if socket_paths.is_empty() {
            return Err(ShardError::Transport("no shard socket given".into()));
        }
        let deadline = Instant::now() + timeout;
        let ranks = join_all(socket_paths.iter().map(|path| connect_rank(path, deadline)))
            .await
            .into_iter()
            .collect::<ShardResult<Vec<_>>>()?;
        Ok(Self { ranks })
    }

    pub fn num_ranks(&self) -> usize {
        self.ranks.len()
    }

    /// Sends `request` to every rank concurrently; rank 0's answer, or the first failure. The
    /// current span's trace context (a step's `shard_step`) rides in each call's metadata.
    async fn broadcast<Req, Resp, Call, Fut>(&self, request: Req, call: Call) -> ShardResult<Resp>
    where
        Req: Clone,
        Call: Fn(ShardStub<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let calls = self
            .ranks
            .iter()
            .map(|stub| call(stub.clone(), traced_request(request.clone())));
        let mut rank0_answer = None;
        for (rank, answer) in join_all(calls).await.into_iter().enumerate() {
            match answer {
                Ok(response) if rank == 0 => rank0_answer = Some(response.into_inner()),
                Ok(_) => {}
                Err(status) => return Err(shard_error(rank, &status)),
            }
        }
        rank0_answer.ok_or_else(|| ShardError::Transport("no rank answered".into()))
    }
}

async fn connect_rank(path: &Path, deadline: Instant) -> ShardResult<ShardStub<Channel>> {
    // The URI is required by tonic but unused: the connector always dials the socket.
    let endpoint = Endpoint::from_static("http://[::]:50051");
    loop {
        let socket_path = path.to_path_buf();
        let connector = service_fn(move |_: Uri| {
            let socket_path = socket_path.clone();
            async move { UnixStream::connect(socket_path).await.map(TokioIo::new) }
        });
        match endpoint.connect_with_connector(connector).await {
            Ok(channel) => {
                return Ok(ShardStub::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES))
            }
            Err(error) if Instant::now() + CONNECT_RETRY_INTERVAL < deadline => {
                tracing::debug!(path = %path.display(), %error, "shard not reachable yet");
                tokio::time::sleep(CONNECT_RETRY_INTERVAL).await;
            }
            Err(error) => {
                return Err(ShardError::Transport(format!(
                    "cannot connect to the shard at {}: {error}",
                    path.display()
                )))
            }
        }
    }
}

/// `Unavailable` means the connection is gone (the process died or closed its socket);
/// any other status is a failed step in a live shard.
fn shard_error(rank: usize, status: &tonic::Status) -> ShardError {
    let message = format!("rank {rank}: {}: {}", status.code(), status.message());
    match status.code() {
        tonic::Code::Unavailable => ShardError::Transport(message),
        _ => ShardError::Status(message),
    }
}

impl ShardClient for GrpcShardClient {
    async fn info(&self) -> ShardResult<proto::InfoResponse> {
        self.broadcast(proto::InfoRequest {}, |mut stub, request| async move {
            stub.info(request).await
        })
        .await
    }

    async fn health(&self) -> ShardResult<()> {
        self.broadcast(proto::HealthRequest {}, |mut stub, request| async move {
            stub.health(request).await
        })
        .await
        .map(drop)
    }

    async fn warmup(&self, request: proto::WarmupRequest) -> ShardResult<proto::WarmupResponse> {
        self.broadcast(request, |mut stub, request| async move {
            stub.warmup(request).await
        })
        .await
    }

    async fn prefill(&self, request: proto::PrefillRequest) -> ShardResult<proto::StepResponse> {
        self.broadcast(request, |mut stub, request| async move {
            stub.prefill(request).await
        })
        .await
    }

    async fn decode(&self, request: proto::DecodeRequest) -> ShardResult<proto::StepResponse> {
        self.broadcast(request, |mut stub, request| async move {
            stub.decode(request).await
        })
        .await
    }

    async fn filter(&self, keep_request_ids: Vec<u64>) -> ShardResult<()> {
        let request = proto::FilterRequest { keep_request_ids };
        self.broadcast(request, |mut stub, request| async move {
            stub.filter(request).await
        })
        .await
        .map(drop)
    }

    async fn clear(&self) -> ShardResult<()> {
        self.broadcast(proto::ClearRequest {}, |mut stub, request| async move {
            stub.clear(request).await
        })
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests;
