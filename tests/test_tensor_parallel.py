"""Tensor parallelism in real processes (gloo on CPU): an Engine split over N ranks generates
what the single-process Engine generates, every rank samples the same tokens, and each rank
holds about 1/N of the weights and of the KV cache per block.

Also the pure parts: head and vocabulary partitions, and loaders reading only their slice of
a safetensors file.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ferrite_server.checkpoint_slice import CheckpointSlice
from ferrite_server.config import DistributedConfig, TcpListen
from ferrite_server.endpoints import host_port, own_endpoint, route_source_address
from ferrite_server.engine.engine import Engine
from ferrite_server.engine.errors import UnsupportedModelError
from ferrite_server.layers.embedding import LMHead, VocabEmbedding, VocabPartition
from ferrite_server.layers.head_partition import HeadPartition
from ferrite_server.layers.linear import AttentionHeads, QKVParallelLinear, RowParallelLinear
from ferrite_server.layers.placement import LayerPlacement
from ferrite_server.weights import TensorParallelRank, weight_loader_of
from tests.support.engines import shard_config
from tests.support.tensor_parallel_ranks import (
    broken_group_worker,
    drive_engine,
    engine_rank_worker,
    run_ranks,
)
from tests.support.tiny_models import TINY_VOCAB_SIZE, TinyModelSpec, write_tiny_model

LOGPROB_TOLERANCE = 1e-4
MAX_NEW_TOKENS = 8
PROMPT_LENGTHS = (13, 4, 9, 6)
GREEDY_REQUESTS = (0, 1)
SEEDED_REQUEST = 2
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _prompts(seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(6, TINY_VOCAB_SIZE) for _ in range(n)] for n in PROMPT_LENGTHS]


def _single_rank(model_dir: Path, prompts: list[list[int]]) -> dict[str, Any]:
    return drive_engine(Engine.load(shard_config(model_dir)), prompts, MAX_NEW_TOKENS)


def _close(actual: float, expected: float) -> bool:
    both_nan = math.isnan(actual) and math.isnan(expected)
    return both_nan or abs(actual - expected) <= LOGPROB_TOLERANCE


def _assert_same_generation(parallel: dict[str, Any], single: dict[str, Any], index: int) -> None:
    assert parallel["token_ids"] == single["token_ids"], f"request {index}"
    assert parallel["finish_reason"] == single["finish_reason"], f"request {index}"
    for got, want in zip(parallel["logprobs"], single["logprobs"], strict=True):
        assert _close(got, want), f"request {index}: logprob {got} != {want}"
    for got, want in zip(parallel["prompt_logprobs"], single["prompt_logprobs"], strict=True):
        assert _close(got, want), f"request {index}: prompt logprob {got} != {want}"
    for got, want in zip(parallel["top_tokens"], single["top_tokens"], strict=True):
        assert [t for t, _ in got] == [t for t, _ in want], f"request {index}: top tokens"


@pytest.mark.parametrize(
    ("spec", "world_size"),
    [
        (TinyModelSpec(family="llama", seed=21), 2),
        # 4 ranks over 2 KV heads: each KV head replicated on 2 ranks; Qwen2's q/k/v biases;
        # 320 vocabulary rows over 3 ranks would not divide, 4 does: see the padding test below.
        (TinyModelSpec(family="qwen2", seed=22, tie_word_embeddings=True), 4),
        # Phi-3's fused qkv / gate_up checkpoint tensors: each part sliced per rank.
        (TinyModelSpec(family="phi3", seed=23), 2),
        # Gemma 2: windows, soft-caps and (1 + w) norms on sliced heads.
        (TinyModelSpec(family="gemma2", seed=24), 2),
        # Mixtral: every expert sliced like a dense MLP, the router replicated.
        (TinyModelSpec(family="mixtral", seed=25), 2),
    ],
    ids=[
        "llama-2-ranks", "qwen2-tied-4-ranks-replicated-kv", "phi3-2-ranks", "gemma2-2-ranks",
        "mixtral-2-ranks",
    ],
)
def test_parallel_engine_generates_what_one_rank_generates(
    spec: TinyModelSpec, world_size: int, tmp_path: Path
) -> None:
    model_dir = write_tiny_model(tmp_path / "model", spec)
    prompts = _prompts(spec.seed)
    run_ranks(
        world_size, engine_rank_worker, str(model_dir), prompts, MAX_NEW_TOKENS, str(tmp_path)
    )
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(world_size)]
    single = _single_rank(model_dir, prompts)

    # Every rank saw the same logits and seeds: identical tokens, also for the request without
    # a seed (its seed comes from rank 0's stream on every rank).
    for rank in ranks[1:]:
        assert [r["token_ids"] for r in rank["requests"]] == [
            r["token_ids"] for r in ranks[0]["requests"]
        ]
        assert rank["num_blocks"] == ranks[0]["num_blocks"]
    for index in (*GREEDY_REQUESTS, SEEDED_REQUEST):
        _assert_same_generation(ranks[0]["requests"][index], single["requests"][index], index)
    # 1/N of the weights per rank; norms are replicated (a few hundred bytes more), and so are
    # the KV heads when there are fewer than ranks (the 4-rank case: k and v count twice).
    replication_allowance = 0.02 if world_size <= 2 else 0.05
    for rank in ranks:
        share = rank["model_memory_bytes"] / single["model_memory_bytes"]
        assert 1 / world_size <= share < 1 / world_size + replication_allowance, share
    # A rank caches only its KV head (1 of the model's 2): twice the blocks in the same bytes.
    assert ranks[0]["num_blocks"] >= 2 * single["num_blocks"]


def test_a_rank_that_does_not_answer_times_out_and_a_dead_rank_is_noticed(
    tmp_path: Path,
) -> None:
    run_ranks(2, broken_group_worker, str(tmp_path))
    result = json.loads((tmp_path / "rank-0.json").read_text())
    # The collective gave up (CollectiveError naming it) instead of waiting forever.
    assert result["timeout"] is not None and "all_reduce" in result["timeout"], result
    # The idle group's heartbeat noticed rank 1's death.
    assert result["noticed"] and result["reason"], result


def test_a_head_count_the_ranks_do_not_divide_is_refused_before_any_rendezvous(
    tmp_path: Path,
) -> None:
    """Nothing listens on the rendezvous port: the refusal must come first."""
    model_dir = write_tiny_model(tmp_path / "model", TinyModelSpec(seed=1))  # 4 heads
    config = replace(
        shard_config(model_dir), distributed=DistributedConfig(rank=1, world_size=3)
    )
    with pytest.raises(UnsupportedModelError, match="4 attention heads .* 3 tensor-parallel"):
        Engine.load(config)


def test_head_partitions_split_or_replicate_kv_heads() -> None:
    assert HeadPartition.of(9, 3, TensorParallelRank(2, 3)) == HeadPartition(3, 1, 2)
    assert HeadPartition.of(32, 8, TensorParallelRank(5, 4)) == HeadPartition(8, 2, 10)
    # 2 KV heads over 8 ranks: ranks 0-3 keep KV head 0, ranks 4-7 KV head 1.
    kv_heads = [HeadPartition.of(16, 2, TensorParallelRank(r, 8)).kv_head_start for r in range(8)]
    assert kv_heads == [0, 0, 0, 0, 1, 1, 1, 1]
    with pytest.raises(UnsupportedModelError, match="4 attention heads .* 3 tensor-parallel"):
        HeadPartition.of(4, 2, TensorParallelRank(0, 3))
    with pytest.raises(UnsupportedModelError, match="6 key/value heads .* 4 tensor-parallel"):
        HeadPartition.of(12, 6, TensorParallelRank(0, 4))


def test_qkv_loader_keeps_the_replicated_kv_head_of_its_query_heads() -> None:
    heads = AttentionHeads(num_heads=4, num_kv_heads=2, head_dim=2)
    q, k, v = torch.randn(8, 6), torch.randn(4, 6), torch.randn(4, 6)
    for rank, kv_head in ((0, 0), (1, 0), (2, 1), (3, 1)):
        placement = LayerPlacement(torch.float32, CPU, TensorParallelRank(rank, 4))
        qkv = QKVParallelLinear(6, heads, bias=False, placement=placement)
        for shard_id, tensor in (("q", q), ("k", k), ("v", v)):
            weight_loader_of(qkv.weight)(qkv.weight, tensor, shard_id)
        kv_rows = slice(2 * kv_head, 2 * kv_head + 2)
        expected = torch.cat([q[2 * rank : 2 * rank + 2], k[kv_rows], v[kv_rows]])
        assert torch.equal(qkv.weight, expected), rank


def test_vocabulary_rows_pad_when_ranks_do_not_divide_the_vocabulary() -> None:
    assert VocabPartition.of(10, TensorParallelRank(2, 3)) == VocabPartition(10, 4, 8, 10)
    full = torch.randn(10, 4)
    embedding = VocabEmbedding(10, 4, LayerPlacement(torch.float32, CPU, TensorParallelRank(2, 3)))
    weight_loader_of(embedding.weight)(embedding.weight, full, None)
    assert torch.equal(embedding.weight[:2], full[8:]) and not embedding.weight[2:].any()
    head = LMHead(10, 4, LayerPlacement(torch.float32, CPU))  # one rank: no padding, no gather
    weight_loader_of(head.weight)(head.weight, full, None)
    hidden = torch.randn(3, 4)
    assert torch.allclose(head(hidden), hidden @ full.T)


def test_loaders_read_only_their_slice_of_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    full = torch.arange(8 * 6, dtype=torch.float32).view(8, 6)
    save_file({"w": full}, str(path))
    read_indices: list[Any] = []

    class RecordingSlice:
        def __init__(self, lazy: Any) -> None:
            self.lazy = lazy

        def get_shape(self) -> list[int]:
            return list(self.lazy.get_shape())

        def __getitem__(self, index: Any) -> torch.Tensor:
            read_indices.append(index)
            return self.lazy[index]

    placement = LayerPlacement(torch.float32, CPU, TensorParallelRank(1, 2))
    row = RowParallelLinear(6, 8, bias=False, placement=placement)
    with safe_open(str(path), framework="pt") as handle:
        lazy = CheckpointSlice("w", RecordingSlice(handle.get_slice("w")))
        weight_loader_of(row.weight)(row.weight, lazy, None)  # type: ignore[arg-type]
    assert torch.equal(row.weight, full[:, 3:])
    assert read_indices == [(slice(None), slice(3, 6))]  # one read, of the columns it keeps


def test_a_rank_gives_the_router_its_socket_or_its_tcp_address(tmp_path: Path) -> None:
    config = shard_config(tmp_path)
    assert own_endpoint(config, None) == f"unix://{config.uds_path}"
    remote = replace(config, tcp_listen=TcpListen(host="10.0.0.2", port=0))
    assert own_endpoint(remote, 29601) == "10.0.0.2:29601"
    assert host_port("::1", 7) == "[::1]:7"
    # The address on the route to a loopback master is loopback (the two-"node" test's case).
    assert route_source_address("127.0.0.1") == "127.0.0.1"
