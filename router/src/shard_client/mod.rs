//! Talking to the shards. `ShardClient` is the seam the scheduler drives: the real
//! implementation (`grpc.rs`) sends every call to every rank over gRPC (unix sockets, TCP for
//! ranks on other nodes), checks that the ranks agree (`agreement.rs`) and returns rank 0's
//! answer; tests use an in-process fake.

pub mod agreement;
pub mod endpoint;
pub mod grpc;

use std::future::Future;

use crate::proto;

/// A failed shard call. `Status` is a gRPC status from a live shard (the step failed, the
/// process is fine); `Transport` means the shard could not be reached.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ShardError {
    #[error("shard error: {0}")]
    Status(String),
    #[error("shard unreachable: {0}")]
    Transport(String),
    /// Tensor-parallel ranks answered the same call differently: they fell out of step.
    #[error("shard ranks disagree: {0}")]
    Disagreement(String),
}

pub type ShardResult<T> = Result<T, ShardError>;

/// The router's view of the whole shard group (all ranks behave as one).
pub trait ShardClient: Send + Sync + 'static {
    fn info(&self) -> impl Future<Output = ShardResult<proto::InfoResponse>> + Send;
    fn health(&self) -> impl Future<Output = ShardResult<()>> + Send;
    fn warmup(
        &self,
        request: proto::WarmupRequest,
    ) -> impl Future<Output = ShardResult<proto::WarmupResponse>> + Send;
    /// A step that computes prompt tokens (possibly with decodes beside them).
    fn prefill(
        &self,
        step: proto::Step,
    ) -> impl Future<Output = ShardResult<proto::StepResponse>> + Send;
    /// A step in which every request decodes.
    fn decode(
        &self,
        step: proto::Step,
    ) -> impl Future<Output = ShardResult<proto::StepResponse>> + Send;
    fn filter(&self, keep_request_ids: Vec<u64>) -> impl Future<Output = ShardResult<()>> + Send;
    fn clear(&self) -> impl Future<Output = ShardResult<()>> + Send;
}
