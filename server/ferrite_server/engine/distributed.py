"""Distributed init: the torch.distributed group of a tensor-parallel shard.

The launcher starts one shard per rank with the standard variables (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT; read by config.py). Rank 0 hosts the rendezvous store
on MASTER_ADDR:MASTER_PORT; every rank, on this node or another, connects to it; then the
process group runs the collectives: NCCL on GPU (one GPU per shard: cuda:<LOCAL_RANK>), gloo
on CPU. Both get the collective timeout from the shard's flags, so a dead or stuck rank becomes
an error on the others, never a hang.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import torch
import torch.distributed as dist

from ferrite_server.config import ShardConfig
from ferrite_server.engine.errors import CollectiveError, UnsupportedModelError
from ferrite_server.layers.head_partition import HeadPartition
from ferrite_server.layers.parallel_group import TensorParallelGroup
from ferrite_server.models.config import DecoderConfig
from ferrite_server.weights import TensorParallelRank

logger = logging.getLogger(__name__)


def check_tensor_parallel(config: DecoderConfig, world_size: int) -> None:
    """Refuse (before any rendezvous) a model whose layers do not split over world_size."""
    if world_size == 1:
        return
    HeadPartition.of(config.num_heads, config.num_kv_heads, TensorParallelRank(0, world_size))
    if config.intermediate_size % world_size != 0:
        raise UnsupportedModelError(
            f"the model's intermediate size {config.intermediate_size} does not split over "
            f"{world_size} tensor-parallel ranks"
        )


def init_tensor_parallel(config: ShardConfig, device: torch.device) -> TensorParallelGroup:
    """Join the group (blocks until every rank joined); one rank needs no torch.distributed."""
    ranks = config.distributed
    if ranks.world_size == 1:
        return TensorParallelGroup()
    if not 0 <= ranks.rank < ranks.world_size:
        raise UnsupportedModelError(f"RANK {ranks.rank} is outside WORLD_SIZE {ranks.world_size}")
    timeouts = config.distributed_timeouts
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    logger.info(
        "joining the tensor-parallel group at %s:%d as rank %d of %d (%s)",
        ranks.master_addr, ranks.master_port, ranks.rank, ranks.world_size, backend,
    )
    try:
        store = dist.TCPStore(
            ranks.master_addr,
            ranks.master_port,
            ranks.world_size,
            is_master=ranks.rank == 0,
            timeout=timedelta(seconds=timeouts.rendezvous_s),
        )
        dist.init_process_group(
            backend,
            store=store,
            rank=ranks.rank,
            world_size=ranks.world_size,
            timeout=timedelta(seconds=timeouts.collective_s),
            device_id=device if device.type == "cuda" else None,
        )
        gloo_timeout = timedelta(seconds=timeouts.collective_s)
        # Object exchanges and block counts stay on the CPU: a gloo group beside NCCL.
        cpu_group = (
            dist.new_group(backend="gloo", timeout=gloo_timeout)
            if backend != "gloo"
            else dist.group.WORLD
        )
        # The heartbeat runs on its own thread: it must never share a group with the engine.
        heartbeat_group = dist.new_group(backend="gloo", timeout=gloo_timeout)
    except RuntimeError as error:  # store timeouts, refused connections, NCCL init failures
        raise CollectiveError(
            f"rank {ranks.rank} could not join the group of {ranks.world_size} at "
            f"{ranks.master_addr}:{ranks.master_port}: {error}"
        ) from error
    return TensorParallelGroup(
        ranks.rank, ranks.world_size, dist.group.WORLD, cpu_group, heartbeat_group
    )


def leave_tensor_parallel() -> None:
    """Release the group's resources (NCCL communicators) before the process exits."""
    if dist.is_initialized():
        dist.destroy_process_group()
