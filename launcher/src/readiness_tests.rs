use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ferrite_router::proto;
use ferrite_router::proto::shard_server::{Shard, ShardServer};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use super::*;

/// A shard whose Health fails until `loaded` is set, like a real shard still loading weights
/// behind an already-bound socket.
#[derive(Clone, Default)]
struct LoadingShard {
    loaded: Arc<AtomicBool>,
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Shard for LoadingShard {
    async fn health(&self, _: Request<proto::HealthRequest>) -> Answer<proto::HealthResponse> {
        if self.loaded.load(Ordering::SeqCst) {
            Ok(Response::new(proto::HealthResponse {}))
        } else {
            Err(Status::unavailable("loading"))
        }
    }
    async fn info(&self, _: Request<proto::InfoRequest>) -> Answer<proto::InfoResponse> {
        Err(Status::unimplemented("not needed"))
    }
    async fn warmup(&self, _: Request<proto::WarmupRequest>) -> Answer<proto::WarmupResponse> {
        Err(Status::unimplemented("not needed"))
    }
    async fn prefill(&self, _: Request<proto::Step>) -> Answer<proto::StepResponse> {
        Err(Status::unimplemented("not needed"))
    }
    async fn decode(&self, _: Request<proto::Step>) -> Answer<proto::StepResponse> {
        Err(Status::unimplemented("not needed"))
    }
    async fn filter(&self, _: Request<proto::FilterRequest>) -> Answer<proto::FilterResponse> {
        Err(Status::unimplemented("not needed"))
    }
    async fn clear(&self, _: Request<proto::ClearRequest>) -> Answer<proto::ClearResponse> {
        Err(Status::unimplemented("not needed"))
    }
    async fn compile_grammar(
        &self,
        _: Request<proto::CompileGrammarRequest>,
    ) -> Answer<proto::CompileGrammarResponse> {
        Err(Status::unimplemented("not needed"))
    }
}

fn socket_path(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("ferrite-{name}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

#[test]
fn only_200_counts_as_healthy() {
    assert!(is_ok_status_line(b"HTTP/1.1 200 OK\r\n"));
    assert!(!is_ok_status_line(b"HTTP/1.1 503 Service Unavailable\r\n"));
    assert!(!is_ok_status_line(b""));
}

#[tokio::test]
async fn a_missing_socket_is_not_healthy() {
    assert!(!shard_health("/nonexistent/ferrite.sock".into()).await);
}

#[tokio::test]
async fn a_socket_that_is_not_grpc_is_not_healthy() {
    let path = socket_path("not-grpc");
    let listener = UnixListener::bind(&path).expect("bind");
    // Accept and immediately drop connections: the socket exists but nothing answers.
    let acceptor = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    assert!(!shard_health(path.clone()).await);
    acceptor.abort();
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn a_shard_is_ready_once_health_answers_not_when_its_socket_appears() {
    let path = socket_path("loading");
    let shard = LoadingShard::default();
    let incoming = UnixListenerStream::new(UnixListener::bind(&path).expect("bind"));
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ShardServer::new(shard.clone()))
            .serve_with_incoming(incoming),
    );
    assert!(
        !shard_health(path.clone()).await,
        "socket bound, model still loading"
    );
    let waiter = tokio::spawn({
        let path = path.clone();
        async move { wait_for_shard(&path).await }
    });
    tokio::time::sleep(PROBE_INTERVAL * 3).await;
    assert!(
        !waiter.is_finished(),
        "must keep waiting while Health fails"
    );
    shard.loaded.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("ready soon after Health answers")
        .expect("waiter task");
    server.abort();
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn the_router_is_ready_on_a_200_from_health() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = [0u8; 256];
            let _ = stream.read(&mut request).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    tokio::time::timeout(Duration::from_secs(10), wait_for_router("127.0.0.1", port))
        .await
        .expect("ready");
    server.abort();
}
