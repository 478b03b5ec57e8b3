//! Where a shard rank serves gRPC: its unix socket (ranks on the router's node) or a TCP
//! address (multi-node: ranks on other nodes, learnt from rank 0's `Info.rank_endpoints`).

use std::fmt;
use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardEndpoint {
    Unix(PathBuf),
    /// `host:port` (IPv6 hosts in brackets).
    Tcp(String),
}

impl ShardEndpoint {
    /// `unix:///path` or `/path` -> Unix; `http://host:port` or `host:port` -> Tcp.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix://") {
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if text.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(text)));
        }
        let address = text.strip_prefix("http://").unwrap_or(text);
        let has_port = address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if has_port {
            Ok(Self::Tcp(address.to_string()))
        } else {
            Err(format!(
                "'{text}' is not a shard endpoint (unix:///path or host:port)"
            ))
        }
    }

    /// A channel to the endpoint (one connection attempt).
    pub async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        match self {
            Self::Unix(path) => {
                // The URI is required by tonic but unused: the connector always dials the socket.
                let endpoint = Endpoint::from_static("http://[::]:50051");
                let socket_path = path.clone();
                let connector = service_fn(move |_: Uri| {
                    let socket_path = socket_path.clone();
                    async move { UnixStream::connect(socket_path).await.map(TokioIo::new) }
                });
                endpoint.connect_with_connector(connector).await
            }
            Self::Tcp(address) => {
                Endpoint::from_shared(format!("http://{address}"))?
                    .tcp_nodelay(true)
                    .connect()
                    .await
            }
        }
    }
}

impl fmt::Display for ShardEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp(address) => write!(f, "{address}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_from_sockets_and_addresses() {
        let unix = ShardEndpoint::Unix(PathBuf::from("/tmp/ferrite-0"));
        assert_eq!(
            ShardEndpoint::parse("unix:///tmp/ferrite-0"),
            Ok(unix.clone())
        );
        assert_eq!(ShardEndpoint::parse("/tmp/ferrite-0"), Ok(unix.clone()));
        assert_eq!(unix.to_string(), "unix:///tmp/ferrite-0");
        let tcp = ShardEndpoint::Tcp("10.0.0.2:29600".into());
        assert_eq!(ShardEndpoint::parse("10.0.0.2:29600"), Ok(tcp.clone()));
        assert_eq!(ShardEndpoint::parse("http://10.0.0.2:29600"), Ok(tcp));
        assert_eq!(
            ShardEndpoint::parse("[::1]:7"),
            Ok(ShardEndpoint::Tcp("[::1]:7".into()))
        );
        assert!(ShardEndpoint::parse("node-1").is_err());
        assert!(ShardEndpoint::parse(":80").is_err());
    }
}
