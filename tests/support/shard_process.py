"""A real `ferrite-server serve` process on a unix socket, for tests that speak gRPC to it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from ferrite_server.proto import shard_pb2 as pb
from ferrite_server.proto import shard_pb2_grpc

SERVER_SOURCE_DIR = Path(__file__).resolve().parents[2] / "server"
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0


@dataclass
class ShardProcess:
    process: subprocess.Popen[bytes]
    uds_path: Path
    stub: shard_pb2_grpc.ShardStub
    channel: grpc.Channel

    def stop(self) -> int:
        self.channel.close()
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_TIMEOUT_S)


def start_shard(model_dir: Path, work_dir: Path, block_size: int) -> ShardProcess:
    """Starts a float32 CPU shard on `model_dir` and waits until it answers Health."""
    uds_path = work_dir / "shard.sock"
    python_path = [str(SERVER_SOURCE_DIR), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, python_path))}
    command = [sys.executable, "-m", "ferrite_server.cli", "serve", "--model-id", str(model_dir),
               "--uds-path", str(uds_path), "--dtype", "float32", "--kv-cache-memory", "1MiB",
               "--block-size", str(block_size)]
    log_path = work_dir / "shard.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    channel = grpc.insecure_channel(f"unix://{uds_path}")
    stub = shard_pb2_grpc.ShardStub(channel)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise AssertionError(f"shard exited {process.returncode}: {log_path.read_text()}")
        try:
            stub.Health(pb.HealthRequest(), timeout=2.0)
            return ShardProcess(process, uds_path, stub, channel)
        except grpc.RpcError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.2)
