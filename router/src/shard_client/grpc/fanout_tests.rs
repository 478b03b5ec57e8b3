//! Tensor-parallel fan-out: ranks that fall out of step fail the call; ranks on other nodes are
//! found through rank 0's Info and reached over TCP.

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use super::*;

/// A free loopback TCP port to serve a fake rank on, and its `host:port`.
async fn bind_tcp() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    (listener, address)
}

fn serve_tcp(listener: TcpListener, rank: FakeRank) {
    let server = tonic::transport::Server::builder()
        .add_service(ShardServer::new(rank))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
}

fn one_chunk() -> proto::Step {
    proto::Step {
        new_requests: vec![proto::NewRequest {
            request_id: 5,
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_rank_that_samples_other_tokens_fails_the_step() {
    let paths = [socket_path("d0"), socket_path("d1"), socket_path("d2")];
    for (rank, path) in paths.iter().enumerate() {
        let token_offset = u32::from(rank == 2);
        serve(
            path,
            FakeRank {
                rank,
                token_offset,
                ..Default::default()
            },
        );
    }
    let client = GrpcShardClient::connect(&paths, TEST_TIMEOUT)
        .await
        .expect("connect");
    let error = client
        .prefill(one_chunk())
        .await
        .expect_err("rank 2 differs");
    match error {
        ShardError::Disagreement(message) => {
            assert!(message.contains("rank 2 differs"), "{message}");
            assert!(message.contains("[100] vs [101]"), "{message}");
        }
        other => panic!("expected a disagreement, got {other:?}"),
    }
    // Calls whose answers agree still work.
    client.health().await.expect("health");
}

#[tokio::test]
async fn ranks_on_other_nodes_are_reached_through_rank0s_endpoints() {
    // Node 0: ranks 0 and 1 on unix sockets (given to the router); node 1: rank 2 on TCP.
    let paths = [socket_path("n0"), socket_path("n1")];
    let (listener, remote_address) = bind_tcp().await;
    let endpoints = vec![
        format!("unix://{}", paths[0].display()),
        format!("unix://{}", paths[1].display()),
        remote_address,
    ];
    let calls: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::default()).collect();
    let fake = |rank: usize| FakeRank {
        rank,
        world_size: 3,
        rank_endpoints: endpoints.clone(),
        prefill_calls: Arc::clone(&calls[rank]),
        ..Default::default()
    };
    serve(&paths[0], fake(0));
    serve(&paths[1], fake(1));
    serve_tcp(listener, fake(2));

    let client = GrpcShardClient::connect_group(&paths, TEST_TIMEOUT)
        .await
        .expect("the whole group");
    assert_eq!(client.num_ranks(), 3);
    let step = client.prefill(one_chunk()).await.expect("prefill");
    assert_eq!(step.generations[0].request_id, 5);
    assert!(calls.iter().all(|count| count.load(Ordering::SeqCst) == 1));
}

#[tokio::test]
async fn a_group_larger_than_its_sockets_needs_rank0s_endpoints() {
    let path = socket_path("e0");
    serve(
        &path,
        FakeRank {
            world_size: 2,
            ..Default::default()
        },
    );
    let error = GrpcShardClient::connect_group(std::slice::from_ref(&path), TEST_TIMEOUT)
        .await
        .expect_err("rank 1 cannot be found");
    assert!(error.to_string().contains("lists 0 endpoints"), "{error}");
}
