"""Per-step gRPC overhead of a shard: client wall time of Decode minus the shard's total_ns.

Starts `ferrite-server serve` on a unix socket, warms it up, prefills one greedy request and
times batch-1 Decode calls from a Python gRPC client:

    PYTHONPATH=server python bench/shard_rpc_overhead.py --model-id DIR [--dtype float32] [--steps 100]

Prints medians / p90 of: client wall, shard total, forward, sampling, rest of the shard
(total - forward - sampling) and the gRPC round trip (wall - total).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from ferrite_server.proto import shard_pb2 as pb
from ferrite_server.proto import shard_pb2_grpc

BLOCK_SIZE = 16
PROMPT = [1, 17, 42, 99, 7, 250, 3, 11]


def start_server(args: argparse.Namespace, uds_path: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "ferrite_server.cli", "serve", "--model-id", args.model_id,
               "--uds-path", str(uds_path), "--dtype", args.dtype, "--kv-cache-memory", "64MiB",
               "--log-level", "WARNING"]
    return subprocess.Popen(command, env=os.environ.copy())


def wait_healthy(stub: shard_pb2_grpc.ShardStub, process: subprocess.Popen[bytes]) -> None:
    while process.poll() is None:
        try:
            stub.Health(pb.HealthRequest(), timeout=2.0)
            return
        except grpc.RpcError:
            time.sleep(0.2)
    raise SystemExit(f"server exited with {process.returncode}")


def measure(stub: shard_pb2_grpc.ShardStub, num_steps: int) -> dict[str, list[float]]:
    max_positions = stub.Info(pb.InfoRequest()).max_position_embeddings
    num_steps = min(num_steps, max_positions - len(PROMPT) - 8)
    max_total_tokens = len(PROMPT) + num_steps + 8
    stub.Warmup(pb.WarmupRequest(max_batch_prefill_tokens=64, max_batch_size=1, max_total_tokens=max_total_tokens))
    block_table = list(range((max_total_tokens + BLOCK_SIZE - 1) // BLOCK_SIZE))
    params = pb.RequestParameters(stopping=pb.StoppingParameters(max_new_tokens=num_steps + 2, ignore_eos=True))
    response = stub.Prefill(pb.Step(new_requests=[pb.NewRequest(
        request_id=1, token_ids=PROMPT, num_prompt_tokens=len(PROMPT), num_scheduled_tokens=len(PROMPT),
        block_ids=block_table, parameters=params)]))
    series: dict[str, list[float]] = {k: [] for k in ("wall", "total", "forward", "sampling", "rest", "grpc")}
    for _ in range(num_steps):
        # As the router sends it: the token sampled last, no new blocks (the table covers all).
        last_token = response.generations[0].tokens[-1].token_id
        request = pb.Step(running_requests=[
            pb.RunningRequest(request_id=1, new_token_ids=[last_token], num_scheduled_tokens=1)])
        started_ns = time.perf_counter_ns()
        response = stub.Decode(request)
        wall_ns = time.perf_counter_ns() - started_ns
        t = response.timings
        for key, value_ns in (("wall", wall_ns), ("total", t.total_ns), ("forward", t.forward_ns),
                              ("sampling", t.sampling_ns), ("rest", t.total_ns - t.forward_ns - t.sampling_ns),
                              ("grpc", wall_ns - t.total_ns)):
            series[key].append(value_ns / 1e6)
    return series


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-id", required=True)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work_dir:
        uds_path = Path(work_dir) / "shard.sock"
        process = start_server(args, uds_path)
        try:
            with grpc.insecure_channel(f"unix://{uds_path}") as channel:
                stub = shard_pb2_grpc.ShardStub(channel)
                wait_healthy(stub, process)
                series = measure(stub, args.steps)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait()
    print(f"model={args.model_id} dtype={args.dtype} batch=1 steps={len(series['wall'])} (ms)")
    for key, values in series.items():
        values = values[5:]  # first steps warm caches
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"  {key:9s} median {statistics.median(values):8.3f}  p90 {p90:8.3f}")


if __name__ == "__main__":
    main()
