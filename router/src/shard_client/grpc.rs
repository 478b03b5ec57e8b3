//! The real `ShardClient`: gRPC over unix sockets (TCP for ranks on other nodes), one channel
//! per rank. Every call goes to all ranks at once (tensor-parallel ranks must run the same step
//! together); any rank's failure fails the call, ranks that answer differently fail it too
//! (`agreement.rs`), else rank 0's answer is returned.

mod discovery;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::proto;
use crate::proto::shard_client::ShardClient as ShardStub;
use crate::telemetry::propagation::traced_request;

use super::agreement::{self, RankAgreement};
use super::endpoint::ShardEndpoint;
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
        let endpoints: Vec<ShardEndpoint> = socket_paths
            .iter()
            .map(|path| ShardEndpoint::Unix(path.clone()))
            .collect();
        Self::connect_endpoints(&endpoints, timeout).await
    }

    /// Connects to every endpoint (rank 0 first), retrying each until `timeout` has passed.
    pub async fn connect_endpoints(
        endpoints: &[ShardEndpoint],
        timeout: Duration,
    ) -> ShardResult<Self> {
        if endpoints.is_empty() {
            return Err(ShardError::Transport("no shard socket given".into()));
        }
        let deadline = Instant::now() + timeout;
        let ranks = join_all(
            endpoints
                .iter()
                .map(|endpoint| connect_rank(endpoint, deadline)),
        )
        .await
        .into_iter()
        .collect::<ShardResult<Vec<_>>>()?;
        Ok(Self { ranks })
    }

    pub fn num_ranks(&self) -> usize {
        self.ranks.len()
    }

    /// Sends `request` to every rank concurrently; rank 0's answer when every rank answered
    /// and all agree, else the first failure. The current span's trace context (a step's
    /// `shard_step`) rides in each call's metadata.
    async fn broadcast<Req, Resp, Call, Fut>(&self, request: Req, call: Call) -> ShardResult<Resp>
    where
        Req: Clone,
        Resp: RankAgreement,
        Call: Fn(ShardStub<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let calls = self
            .ranks
            .iter()
            .map(|stub| call(stub.clone(), traced_request(request.clone())));
        let mut answers = Vec::with_capacity(self.ranks.len());
        for (rank, answer) in join_all(calls).await.into_iter().enumerate() {
            match answer {
                Ok(response) => answers.push(response.into_inner()),
                Err(status) => return Err(shard_error(rank, &status)),
            }
        }
        agreement::check(&answers)?;
        answers
            .into_iter()
            .next()
            .ok_or_else(|| ShardError::Transport("no rank answered".into()))
    }
}

async fn connect_rank(
    endpoint: &ShardEndpoint,
    deadline: Instant,
) -> ShardResult<ShardStub<Channel>> {
    loop {
        match endpoint.connect().await {
            Ok(channel) => {
                return Ok(ShardStub::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES))
            }
            Err(error) if Instant::now() + CONNECT_RETRY_INTERVAL < deadline => {
                tracing::debug!(%endpoint, %error, "shard not reachable yet");
                tokio::time::sleep(CONNECT_RETRY_INTERVAL).await;
            }
            Err(error) => {
                return Err(ShardError::Transport(format!(
                    "cannot connect to the shard at {endpoint}: {error}"
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

    async fn prefill(&self, request: proto::Step) -> ShardResult<proto::StepResponse> {
        self.broadcast(request, |mut stub, request| async move {
            stub.prefill(request).await
        })
        .await
    }

    async fn decode(&self, request: proto::Step) -> ShardResult<proto::StepResponse> {
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

impl crate::validation::grammar::GrammarCompiler for GrpcShardClient {
    /// Every rank compiles (each keeps its own cache, every rank masks its own sampling).
    fn compile(&self, grammar: proto::Grammar) -> crate::validation::grammar::CompileFuture<'_> {
        let request = proto::CompileGrammarRequest {
            grammar: Some(grammar),
        };
        Box::pin(async move {
            self.broadcast(request, |mut stub, request| async move {
                stub.compile_grammar(request).await
            })
            .await
            .map_err(|error| format!("the shards could not compile it: {error}"))
        })
    }
}

#[cfg(test)]
mod tests;
