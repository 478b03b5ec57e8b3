"""Tensor-parallel groups of real processes for tests: N ranks over gloo on this machine.

`run_ranks(world_size, worker, *args)` starts `worker(rank, world_size, master_port, *args)`
in N spawned processes (the way shards run: one process per rank, the standard rendezvous
variables) and fails with the first rank's traceback. Workers are module-level functions so
the spawned processes can import them.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from ferrite_server.config import DistributedConfig, DistributedTimeouts, ShardConfig
from ferrite_server.engine.engine import Engine
from ferrite_server.engine.types import RequestParams, SamplingParams, StoppingParams
from tests.support.engine_driver import BlockAllocator, EngineDriver, ScriptedRequest
from tests.support.engines import TEST_KV_CACHE_BYTES

# Generous: two cores shared by several processes; a hang guard, not a speed requirement.
TEST_COLLECTIVE_TIMEOUT_S = 120.0
# The collective timeout the broken-group test waits out.
BROKEN_GROUP_TIMEOUT_S = 3.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_ranks(world_size: int, worker: Callable[..., None], *args: Any) -> None:
    port = free_port()
    mp.spawn(worker, args=(world_size, port, *args), nprocs=world_size, join=True)


def distributed_shard_config(
    model_dir: Path, rank: int, world_size: int, master_port: int
) -> ShardConfig:
    return ShardConfig(
        model_id=model_dir,
        uds_path=model_dir / "unused.sock",
        dtype="float32",
        kv_cache_memory_bytes=TEST_KV_CACHE_BYTES,
        block_size_tokens=4,
        distributed=DistributedConfig(
            rank=rank, world_size=world_size, local_rank=rank, master_port=master_port
        ),
        distributed_timeouts=DistributedTimeouts(collective_s=TEST_COLLECTIVE_TIMEOUT_S),
    )


def scripted_requests(prompts: list[list[int]], max_new_tokens: int) -> list[ScriptedRequest]:
    """Greedy requests with top-n and prompt logprobs, one seeded and one unseeded sampler;
    they join at different steps and one prompt is chunked, so steps mix prefill and decode."""
    stopping = StoppingParams(max_new_tokens=max_new_tokens)
    greedy = RequestParams(stopping=stopping, top_n_tokens=3, prompt_logprobs=True)
    seeded = RequestParams(
        sampling=SamplingParams(do_sample=True, temperature=0.8, top_k=40, seed=1234),
        stopping=stopping,
    )
    unseeded = RequestParams(sampling=SamplingParams(do_sample=True, top_p=0.9), stopping=stopping)
    params = [greedy, greedy, seeded, unseeded]
    return [
        ScriptedRequest(
            request_id=10 + index,
            prompt_ids=prompt,
            params=params[index % len(params)],
            join_step=index,
            chunk_sizes=(5,) if index == 0 else (),
        )
        for index, prompt in enumerate(prompts)
    ]


def drive_engine(engine: Engine, prompts: list[list[int]], max_new_tokens: int) -> dict[str, Any]:
    """Run the scripted requests; what each request produced, as JSON-able data."""
    warmup = engine.warmup(max_batch_prefill_tokens=64, max_batch_size=8, max_total_tokens=128)
    requests = scripted_requests(prompts, max_new_tokens)
    EngineDriver(engine, BlockAllocator(warmup.num_blocks, seed=7)).run(requests)
    return {
        "num_blocks": warmup.num_blocks,
        "model_memory_bytes": warmup.model_memory_bytes,
        "kv_cache_memory_bytes": warmup.kv_cache_memory_bytes,
        "requests": [
            {
                "token_ids": request.generated_ids,
                "logprobs": [token.logprob for token in request.tokens],
                "top_tokens": [list(token.top_tokens) for token in request.tokens],
                "prompt_logprobs": request.prompt_logprobs,
                "finish_reason": int(request.finish_reason),
            }
            for request in requests
        ],
    }


def engine_rank_worker(
    rank: int,
    world_size: int,
    master_port: int,
    model_dir: str,
    prompts: list[list[int]],
    max_new_tokens: int,
    out_dir: str,
) -> None:
    """One rank of a tensor-parallel Engine; writes what it generated to out_dir/rank-N.json."""
    torch.set_num_threads(1)
    config = distributed_shard_config(Path(model_dir), rank, world_size, master_port)
    engine = Engine.load(config)
    result = drive_engine(engine, prompts, max_new_tokens)
    (Path(out_dir) / f"rank-{rank}.json").write_text(json.dumps(result))


def broken_group_worker(rank: int, world_size: int, master_port: int, out_dir: str) -> None:
    """Rank 0 waits in an all-reduce rank 1 never joins (it must time out), then watches the
    group with the heartbeat while rank 1 beats a few times and dies (it must notice)."""
    import os
    import threading
    import time

    from ferrite_server.config import DistributedConfig, DistributedTimeouts, ShardConfig
    from ferrite_server.engine.distributed import init_tensor_parallel
    from ferrite_server.engine.errors import CollectiveError
    from ferrite_server.engine.group_watchdog import GroupWatchdog

    config = ShardConfig(
        model_id=Path(out_dir),
        uds_path=Path(out_dir) / "unused.sock",
        distributed=DistributedConfig(rank, world_size, rank, master_port=master_port),
        distributed_timeouts=DistributedTimeouts(collective_s=BROKEN_GROUP_TIMEOUT_S),
    )
    group = init_tensor_parallel(config, torch.device("cpu"))
    lost: list[str] = []
    noticed = threading.Event()

    def on_lost(reason: str) -> None:
        lost.append(reason)
        noticed.set()

    watchdog = GroupWatchdog(group.heartbeat_group, on_lost, interval_s=0.2)
    if rank == 1:
        time.sleep(BROKEN_GROUP_TIMEOUT_S + 0.5)  # rank 0's all-reduce has timed out by now
        watchdog.start()
        time.sleep(1.0)  # a few heartbeats with rank 0
        os._exit(0)  # dies without a goodbye, as a killed process does
    result: dict[str, Any] = {}
    try:
        group.all_reduce(torch.ones(2))
        result["timeout"] = None
    except CollectiveError as error:
        result["timeout"] = str(error)
    watchdog.start()
    result["noticed"] = noticed.wait(TEST_COLLECTIVE_TIMEOUT_S)
    result["reason"] = lost[0] if lost else None
    (Path(out_dir) / "rank-0.json").write_text(json.dumps(result))
    # A group broken by a timeout may abort in its C++ destructors at interpreter exit; the
    # shard leaves with os._exit for the same reason (cli.py).
    os._exit(0)
