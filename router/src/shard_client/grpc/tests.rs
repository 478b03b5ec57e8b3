//! The client against fake shard ranks served over real unix sockets.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use super::*;
use crate::proto::shard_server::{Shard, ShardServer};

const TEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Default)]
struct FakeRank {
    rank: usize,
    fail_prefill: bool,
    prefill_calls: Arc<AtomicUsize>,
    /// Added to every token id this rank answers: non-zero makes it fall out of step.
    token_offset: u32,
    world_size: u32,
    rank_endpoints: Vec<String>,
}

#[tonic::async_trait]
impl Shard for FakeRank {
    async fn info(
        &self,
        _: Request<proto::InfoRequest>,
    ) -> Result<Response<proto::InfoResponse>, Status> {
        // The device differs per rank, as on GPUs; everything else describes the one model.
        Ok(Response::new(proto::InfoResponse {
            model_id: "fake".into(),
            device: format!("rank{}", self.rank),
            world_size: self.world_size,
            rank_endpoints: self.rank_endpoints.clone(),
            ..Default::default()
        }))
    }
    async fn compile_grammar(
        &self,
        request: Request<proto::CompileGrammarRequest>,
    ) -> Result<Response<proto::CompileGrammarResponse>, Status> {
        let grammar = request.into_inner().grammar.unwrap_or_default();
        let error = if grammar.value.is_empty() {
            "empty grammar".into()
        } else {
            String::new()
        };
        Ok(Response::new(proto::CompileGrammarResponse {
            error,
            ..Default::default()
        }))
    }
    async fn health(
        &self,
        _: Request<proto::HealthRequest>,
    ) -> Result<Response<proto::HealthResponse>, Status> {
        Ok(Response::new(proto::HealthResponse {}))
    }
    async fn warmup(
        &self,
        request: Request<proto::WarmupRequest>,
    ) -> Result<Response<proto::WarmupResponse>, Status> {
        // Memory is rank-specific (not compared), so the test can tell whose answer came back.
        Ok(Response::new(proto::WarmupResponse {
            num_blocks: request.into_inner().max_batch_size,
            model_memory_bytes: self.rank as u64,
            ..Default::default()
        }))
    }
    async fn prefill(
        &self,
        request: Request<proto::Step>,
    ) -> Result<Response<proto::StepResponse>, Status> {
        self.prefill_calls.fetch_add(1, Ordering::SeqCst);
        if self.fail_prefill {
            return Err(Status::internal("out of memory"));
        }
        let generations = request
            .into_inner()
            .new_requests
            .iter()
            .map(|new| proto::Generation {
                request_id: new.request_id,
                tokens: vec![proto::GeneratedToken {
                    token_id: 100 + self.token_offset,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        Ok(Response::new(proto::StepResponse {
            generations,
            timings: None,
        }))
    }
    async fn decode(
        &self,
        _: Request<proto::Step>,
    ) -> Result<Response<proto::StepResponse>, Status> {
        Ok(Response::new(proto::StepResponse::default()))
    }
    async fn filter(
        &self,
        _: Request<proto::FilterRequest>,
    ) -> Result<Response<proto::FilterResponse>, Status> {
        Ok(Response::new(proto::FilterResponse {}))
    }
    async fn clear(
        &self,
        _: Request<proto::ClearRequest>,
    ) -> Result<Response<proto::ClearResponse>, Status> {
        Ok(Response::new(proto::ClearResponse {}))
    }
}

fn socket_path(name: &str) -> PathBuf {
    let path =
        std::env::temp_dir().join(format!("ferrite-grpc-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

fn serve(path: &Path, rank: FakeRank) {
    let listener = UnixListener::bind(path).expect("bind the test socket");
    let server = tonic::transport::Server::builder()
        .add_service(ShardServer::new(rank))
        .serve_with_incoming(UnixListenerStream::new(listener));
    tokio::spawn(server);
}

#[tokio::test]
async fn every_rank_gets_the_call_and_rank0_answers() {
    let paths = [socket_path("a0"), socket_path("a1")];
    let calls: Vec<Arc<AtomicUsize>> = (0..2).map(|_| Arc::default()).collect();
    for (rank, path) in paths.iter().enumerate() {
        serve(
            path,
            FakeRank {
                rank,
                prefill_calls: Arc::clone(&calls[rank]),
                ..Default::default()
            },
        );
    }
    let client = GrpcShardClient::connect(&paths, TEST_TIMEOUT)
        .await
        .expect("connect");
    assert_eq!(client.num_ranks(), 2);
    assert_eq!(client.info().await.expect("info").device, "rank0");
    let warmup = client.warmup(proto::WarmupRequest {
        max_batch_size: 7,
        ..Default::default()
    });
    let warmup = warmup.await.expect("warmup");
    assert_eq!((warmup.num_blocks, warmup.model_memory_bytes), (7, 0));

    let new = proto::NewRequest {
        request_id: 42,
        ..Default::default()
    };
    let request = proto::Step {
        new_requests: vec![new],
        ..Default::default()
    };
    let step = client.prefill(request).await.expect("prefill");
    assert_eq!(step.generations[0].request_id, 42);
    assert_eq!(calls[0].load(Ordering::SeqCst), 1);
    assert_eq!(calls[1].load(Ordering::SeqCst), 1);
    client.health().await.expect("health");
    client.filter(vec![1, 2]).await.expect("filter");
    client.clear().await.expect("clear");
}

#[tokio::test]
async fn any_rank_failing_fails_the_call() {
    let paths = [socket_path("b0"), socket_path("b1")];
    serve(
        &paths[0],
        FakeRank {
            rank: 0,
            ..Default::default()
        },
    );
    serve(
        &paths[1],
        FakeRank {
            rank: 1,
            fail_prefill: true,
            ..Default::default()
        },
    );
    let client = GrpcShardClient::connect(&paths, TEST_TIMEOUT)
        .await
        .expect("connect");
    let error = client
        .prefill(proto::Step::default())
        .await
        .expect_err("rank 1 fails");
    match error {
        ShardError::Status(message) => {
            assert!(
                message.contains("rank 1") && message.contains("out of memory"),
                "{message}"
            )
        }
        other => panic!("expected a status error, got {other:?}"),
    }
    // The connection survives a failed step.
    assert_eq!(client.info().await.expect("info").device, "rank0");
}

#[tokio::test]
async fn connect_waits_for_a_socket_that_appears_later() {
    let path = socket_path("late");
    let connecting = tokio::spawn({
        let paths = vec![path.clone()];
        async move { GrpcShardClient::connect(&paths, TEST_TIMEOUT).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    serve(&path, FakeRank::default());
    let client = connecting
        .await
        .expect("join")
        .expect("connect after retries");
    assert_eq!(client.info().await.expect("info").device, "rank0");
}

#[tokio::test]
async fn connect_gives_up_at_the_deadline() {
    let path = socket_path("missing");
    let error = GrpcShardClient::connect(std::slice::from_ref(&path), Duration::from_millis(100))
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(&error, ShardError::Transport(message) if message.contains("missing")),
        "{error}"
    );
}

#[path = "fanout_tests.rs"]
mod fanout;

#[test]
fn unavailable_is_transport_other_codes_are_step_failures() {
    let gone = shard_error(2, &Status::unavailable("connection refused"));
    assert!(
        matches!(&gone, ShardError::Transport(m) if m.starts_with("rank 2:")),
        "{gone}"
    );
    let failed = shard_error(0, &Status::invalid_argument("block table too short"));
    assert!(matches!(&failed, ShardError::Status(m) if m.contains("block table too short")));
}
