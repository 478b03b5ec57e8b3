"""Where the router reaches each rank: the rank endpoints rank 0 reports in Info.

One node: every rank serves gRPC on its unix socket and the launcher hands the router all of
them. Several nodes: the router runs on node 0 and is given only node 0's sockets; ranks on
other nodes also serve gRPC on TCP (`--grpc-tcp-port`). At start-up the ranks exchange their
endpoints over the tensor-parallel group (one all_gather_object), so rank 0's Info lists, for
every rank, the address the router should use: `unix:///path` for a rank without TCP (on the
router's node), `host:port` for the others.
"""

from __future__ import annotations

import ipaddress
import socket

from ferrite_server.config import ShardConfig
from ferrite_server.layers.parallel_group import TensorParallelGroup

# Any port will do: a UDP "connect" sends nothing, it only asks the kernel for a route.
_ROUTE_PROBE_PORT = 9


def route_source_address(destination_host: str) -> str:
    """The local address this host uses to reach `destination_host` (the master): an
    address of the node the other nodes can reach, unlike 127.0.1.1 from the hostname."""
    family = socket.AF_INET6 if _is_ipv6(destination_host) else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((destination_host, _ROUTE_PROBE_PORT))
        address: str = probe.getsockname()[0]
        return address


def host_port(host: str, port: int) -> str:
    """`host:port`, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if _is_ipv6(host) else f"{host}:{port}"


def own_endpoint(config: ShardConfig, tcp_port: int | None) -> str:
    """This rank's endpoint for the router: TCP when it serves TCP, else its unix socket."""
    if config.tcp_listen is not None and tcp_port is not None:
        return host_port(config.tcp_listen.host, tcp_port)
    return f"unix://{config.uds_path.absolute()}"


def exchange_endpoints(group: TensorParallelGroup, own: str) -> tuple[str, ...]:
    """Every rank's endpoint, indexed by rank (a collective: every rank calls it once)."""
    return tuple(group.all_gather_object(own))


def _is_ipv6(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host.strip("[]")), ipaddress.IPv6Address)
    except ValueError:
        return False
