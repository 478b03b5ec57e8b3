"""Run-time code generation of the shard proto: keyed by content, reused, with a fallback."""

from __future__ import annotations

from pathlib import Path

from ferrite_server.proto import shard_pb2, shard_pb2_grpc
from ferrite_server.proto.codegen import (
    PROTO_RELATIVE_PATH,
    codegen_digest,
    ensure_generated,
    find_proto_root,
)


def test_modules_expose_the_contract() -> None:
    request = shard_pb2.Step(
        new_requests=[shard_pb2.NewRequest(request_id=3, token_ids=[1, 2], num_scheduled_tokens=2)],
        running_requests=[shard_pb2.RunningRequest(request_id=4, new_token_ids=[7], num_scheduled_tokens=1)],
    )
    assert shard_pb2.Step.FromString(request.SerializeToString()) == request
    methods = shard_pb2.DESCRIPTOR.services_by_name["Shard"].methods_by_name
    assert methods["Prefill"].input_type.name == methods["Decode"].input_type.name == "Step"
    assert hasattr(shard_pb2_grpc, "ShardStub") and hasattr(shard_pb2_grpc, "add_ShardServicer_to_server")
    assert shard_pb2.DESCRIPTOR.package == "ferrite.shard.v1"


def test_digest_follows_the_proto_text(tmp_path: Path) -> None:
    original = find_proto_root() / PROTO_RELATIVE_PATH
    copy = tmp_path / PROTO_RELATIVE_PATH
    copy.parent.mkdir(parents=True)
    copy.write_text(original.read_text())
    assert codegen_digest(copy) == codegen_digest(original)
    copy.write_text(original.read_text() + "\n// edited\n")
    assert codegen_digest(copy) != codegen_digest(original)


def test_generated_once_then_reused(tmp_path: Path) -> None:
    unusable = tmp_path / "file-not-dir"  # like a read-only install: mkdir fails, fall back
    unusable.write_text("")
    first = ensure_generated(find_proto_root(), "abc", [unusable / "_generated", tmp_path / "gen"])
    assert first == tmp_path / "gen" / "abc"
    names = sorted(p.name for p in first.iterdir())
    assert names == ["__init__.py", "shard_pb2.py", "shard_pb2_grpc.py"]
    assert "from . import shard_pb2" in (first / "shard_pb2_grpc.py").read_text()
    before_ns = (first / "shard_pb2.py").stat().st_mtime_ns
    assert ensure_generated(find_proto_root(), "abc", [tmp_path / "gen"]) == first
    assert (first / "shard_pb2.py").stat().st_mtime_ns == before_ns
    assert list((tmp_path / "gen").iterdir()) == [first]  # no staging leftovers
