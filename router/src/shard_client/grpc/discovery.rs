//! Multi-node: the router runs on node 0 and is given node 0's shard sockets only; the ranks on
//! other nodes are found through rank 0's `Info.rank_endpoints` (every rank's gRPC endpoint,
//! exchanged by the shards when they start) and reached over TCP.

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use super::GrpcShardClient;
use crate::shard_client::endpoint::ShardEndpoint;
use crate::shard_client::{ShardClient, ShardError, ShardResult};

impl GrpcShardClient {
    /// Connects to `socket_paths` (rank 0 first), then to every rank of the group they do not
    /// cover, through the endpoints rank 0 reports; all within `timeout`.
    pub async fn connect_group(socket_paths: &[PathBuf], timeout: Duration) -> ShardResult<Self> {
        let deadline = Instant::now() + timeout;
        let mut client = Self::connect(socket_paths, timeout).await?;
        let info = client.info().await?;
        let given = client.ranks.len();
        let world_size = usize::try_from(info.world_size).unwrap_or(usize::MAX);
        if world_size == 0 || world_size == given {
            return Ok(client);
        }
        if world_size < given {
            return Err(ShardError::Transport(format!(
                "{given} shard sockets given, but the shards form a group of {world_size} ranks"
            )));
        }
        if info.rank_endpoints.len() != world_size {
            return Err(ShardError::Transport(format!(
                "the group has {world_size} ranks, {given} sockets were given, and rank 0 lists \
                 {} endpoints: cannot reach the others",
                info.rank_endpoints.len()
            )));
        }
        let others = info.rank_endpoints[given..]
            .iter()
            .map(|text| ShardEndpoint::parse(text).map_err(ShardError::Transport))
            .collect::<ShardResult<Vec<_>>>()?;
        tracing::info!(
            world_size,
            local_ranks = given,
            remote = %others.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            "connecting to the ranks on other nodes"
        );
        let remaining = deadline.saturating_duration_since(Instant::now());
        let remote = Self::connect_endpoints(&others, remaining).await?;
        client.ranks.extend(remote.ranks);
        // Every rank answers and agrees with rank 0 before anything else is sent.
        client.info().await?;
        Ok(client)
    }
}
