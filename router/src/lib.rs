//! ferrite-router: the control plane (DESIGN.md "Processes").

pub mod proto {
    //! Code generated from proto/ferrite/shard/v1/shard.proto at build time.
    #![allow(clippy::all, clippy::unwrap_used)]
    tonic::include_proto!("ferrite.shard.v1");
}

pub mod scheduler;
pub mod shard_client;
