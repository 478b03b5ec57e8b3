//! ferrite-router: the control plane (DESIGN.md "Processes").

pub mod proto {
    //! Code generated from proto/ferrite/shard/v1/shard.proto at build time.
    #![allow(clippy::all, clippy::unwrap_used)]
    tonic::include_proto!("ferrite.shard.v1");
}

pub mod api;
pub mod config;
pub mod detokenize;
pub mod error;
pub mod generation;
pub mod http;
pub mod metrics;
pub mod openai;
pub mod scheduler;
pub mod server;
pub mod shard_client;
pub mod stop;
pub mod telemetry;
pub mod tokenizer;
pub mod validation;

#[cfg(test)]
pub(crate) mod testing;
