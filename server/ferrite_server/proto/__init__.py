"""The router<->shard gRPC contract as Python modules, compiled from `proto/` on first use.

    from ferrite_server.proto import shard_pb2, shard_pb2_grpc
"""

from ferrite_server.proto.codegen import load_shard_proto

_modules = load_shard_proto()
shard_pb2 = _modules.shard_pb2
shard_pb2_grpc = _modules.shard_pb2_grpc

__all__ = ["shard_pb2", "shard_pb2_grpc"]
