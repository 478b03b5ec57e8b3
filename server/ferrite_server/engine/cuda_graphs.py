"""CUDA graphs for decode steps: one captured forward per batch-size bucket (and per tokens per
sequence: 1, and N + 1 for --speculate N verify steps), replayed with padding.

Eager decode of a small batch is launch-bound (bench/RESULTS.md: ~1000 kernel launches, ~34 ms
of host time per 8B step against ~8 ms of GPU time). A graph replays the whole forward with one
launch. Graphs bake in tensor addresses and launch grids, so:
- every input lives in a static buffer sized for the largest bucket; a step's inputs are copied
  into the first `batch` rows and the rest of its bucket is padding: context length 0 (attention
  reads nothing, the decode kernel writes zeros or leaves the row alone) and cache slot -1 (the
  KV write skips it); padding rows' outputs are never read;
- the attention kernels' grids depend only on host sizes, so each bucket is captured with
  max_seq_len = the longest context the router may send, and shorter contexts simply leave
  partitions idle (kernels/paged_decode_attention.py);
- only steps where every sequence has the same captured number of new tokens (1: a decode;
  N + 1: a speculative verify of N proposals) and whose batch and block tables fit are
  replayed; anything else (prompts, chunks, mixed proposal counts, bigger batches) runs
  eagerly. A verify graph's padding sequences hold their own N + 1 tokens (context N + 1 in
  whatever block their table row names, written nowhere), so the varlen kernel sees
  well-formed sequences.

All buckets share one memory pool, captured largest first so smaller ones reuse its blocks. Their
memory is measured by a capture with a throw-away KV cache before the real cache is sized
(engine.warmup), so the KV cache never takes memory the graphs need.

The capture step is injectable (`GraphCapture`): on a CPU there is nothing to capture, and tests
check the padding and staging through `EagerReplay`, which re-runs the forward on the same
static buffers.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch

from ferrite_server.engine.forward_inputs import ForwardInputs
from ferrite_server.engine.kv_cache import KVCacheSpec, allocate_kv_cache
from ferrite_server.layers.attention.backend import AttentionMetadata
from ferrite_server.layers.lora import NO_ADAPTER, LoraBatch
from ferrite_server.models.interface import CausalLM, KVCache

# Batch sizes with a graph (vLLM-like spacing: exact for tiny batches, then every 8 / 16 / 32).
DEFAULT_DECODE_BATCH_BUCKETS = (
    1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256,
)
PADDING_SLOT = -1  # the KV write kernel skips negative slots


class GraphKey(NamedTuple):
    """Which captured graph replays a step."""

    batch: int  # sequences, the bucket's size
    tokens_per_seq: int  # new tokens of every sequence: 1 (decode) or N + 1 (verify)

    @property
    def num_tokens(self) -> int:
        return self.batch * self.tokens_per_seq


def decode_buckets(max_batch_size: int, requested: Sequence[int] | None = None) -> tuple[int, ...]:
    """Buckets to capture for batches up to max_batch_size.

    `requested` (the --cuda-graphs list) is taken as given, sorted; by default the standard
    buckets below max_batch_size plus the first one at or above it, so every batch the router
    may send up to 256 has a graph.
    """
    if requested is not None:
        return tuple(sorted({size for size in requested if size > 0}))
    below = [size for size in DEFAULT_DECODE_BATCH_BUCKETS if size < max_batch_size]
    at_or_above = [size for size in DEFAULT_DECODE_BATCH_BUCKETS if size >= max_batch_size]
    return tuple(below + at_or_above[:1])


@dataclass(frozen=True)
class DecodeGraphShape:
    """What the graphs are captured for."""

    buckets: tuple[int, ...]  # ascending batch sizes
    max_seq_len: int  # longest context (prompt + generated) a request may reach
    block_size: int
    # LoRA adapters are loaded: every graph runs the LoRA layers from a static buffer of
    # token adapters (base-model rows and padding: -1, which the kernels skip).
    has_lora: bool = False
    # New tokens per sequence with a graph: (1,) or, with --speculate N, (1, N + 1).
    tokens_per_seq: tuple[int, ...] = (1,)

    @property
    def max_blocks_per_seq(self) -> int:
        return -(-self.max_seq_len // self.block_size)

    @property
    def max_batch(self) -> int:
        return self.buckets[-1]

    @property
    def max_tokens(self) -> int:
        return self.max_batch * max(self.tokens_per_seq)

    @property
    def keys(self) -> tuple[GraphKey, ...]:
        return tuple(GraphKey(b, q) for q in self.tokens_per_seq for b in self.buckets)


class StaticDecodeInputs:
    """The device buffers every captured graph reads its inputs from."""

    def __init__(self, shape: DecodeGraphShape, device: torch.device) -> None:
        rows, tokens = shape.max_batch, shape.max_tokens
        self.input_ids = torch.zeros(tokens, dtype=torch.int64, device=device)
        self.positions = torch.zeros(tokens, dtype=torch.int64, device=device)
        self.seq_lens = torch.zeros(rows, dtype=torch.int32, device=device)
        self.slot_mapping = torch.full((tokens,), PADDING_SLOT, dtype=torch.int64, device=device)
        self.block_tables = torch.zeros(
            rows, shape.max_blocks_per_seq, dtype=torch.int32, device=device
        )
        # Fixed for a graph: sequence s's new tokens start at s * tokens_per_seq.
        self.query_start_locs = {
            q: torch.arange(0, (rows + 1) * q, q, dtype=torch.int32, device=device)
            for q in shape.tokens_per_seq
        }
        self.token_adapters = (
            torch.full((tokens,), NO_ADAPTER, dtype=torch.int32, device=device)
            if shape.has_lora
            else None
        )
        self.shape = shape

    def metadata(self, key: GraphKey) -> AttentionMetadata:
        """Attention metadata of the graph `key`: device views of the static buffers; the host
        fields describe the longest context, which fixes the kernels' launch grids."""
        max_seq_len, (batch, q) = self.shape.max_seq_len, key
        return AttentionMetadata(
            query_start_loc=self.query_start_locs[q][: batch + 1],
            seq_lens=self.seq_lens[:batch],
            block_tables=self.block_tables[:batch],
            slot_mapping=self.slot_mapping[: key.num_tokens],
            max_query_len=q,
            max_seq_len=max_seq_len,
            query_start_loc_cpu=tuple(range(0, (batch + 1) * q, q)),
            seq_lens_cpu=(max_seq_len,) * batch,
            lora=(
                None
                if self.token_adapters is None
                else LoraBatch(self.token_adapters[: key.num_tokens])
            ),
        )

    def stage(self, inputs: ForwardInputs, key: GraphKey) -> None:
        """Copy a step's inputs into the first rows; pad the rest of the bucket."""
        metadata = inputs.attn_metadata
        batch, num_tokens = metadata.num_seqs, inputs.num_tokens
        self.input_ids[:num_tokens].copy_(inputs.input_ids)
        self.positions[:num_tokens].copy_(inputs.positions)
        self.seq_lens[:batch].copy_(metadata.seq_lens)
        self.slot_mapping[:num_tokens].copy_(metadata.slot_mapping)
        width = metadata.block_tables.shape[1]
        self.block_tables[:batch, :width].copy_(metadata.block_tables)
        if key.batch > batch:
            # A decode pad has no context; a verify pad attends over its own tokens.
            pad_seq_len = 0 if key.tokens_per_seq == 1 else key.tokens_per_seq
            self.seq_lens[batch : key.batch].fill_(pad_seq_len)
            self.slot_mapping[num_tokens : key.num_tokens].fill_(PADDING_SLOT)
        if self.token_adapters is not None:
            self.token_adapters.fill_(NO_ADAPTER)
            if metadata.lora is not None:
                self.token_adapters[:num_tokens].copy_(metadata.lora.token_adapters)

    def fill_for_capture(self) -> None:
        """Inputs a capture (and its eager warm-up) may run on: contexts of the most new tokens
        a graph has, in block 0, and no KV write (every slot padding)."""
        self.input_ids.zero_()
        self.positions.zero_()
        self.seq_lens.fill_(max(self.shape.tokens_per_seq))
        self.slot_mapping.fill_(PADDING_SLOT)
        self.block_tables.zero_()


class Replay(Protocol):
    def replay(self) -> None: ...


class GraphCapture(Protocol):
    """Turns `run` (which returns the forward's output) into something replayable, and that
    output buffer."""

    def __call__(self, run: Callable[[], torch.Tensor]) -> tuple[Replay, torch.Tensor]: ...


class CudaGraphCapture:
    """torch.cuda.CUDAGraph capture into one shared pool, after an eager warm-up on a side
    stream (Triton compiles and autotunes there, outside the capture)."""

    WARMUP_RUNS = 2

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()

    def __call__(self, run: Callable[[], torch.Tensor]) -> tuple[Replay, torch.Tensor]:
        side_stream = torch.cuda.Stream(self.device)
        side_stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side_stream):
            for _ in range(self.WARMUP_RUNS):
                run()
        torch.cuda.current_stream(self.device).wait_stream(side_stream)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = run()
        torch.cuda.synchronize(self.device)
        return graph, output


class _EagerRun:
    def __init__(self, run: Callable[[], torch.Tensor], output: torch.Tensor) -> None:
        self._run = run
        self._output = output

    def replay(self) -> None:
        self._output.copy_(self._run())


class EagerReplay:
    """A stand-in for graph capture where there is no GPU: "replay" re-runs the forward on the
    static buffers into a fixed output, exactly the data flow a graph replay has."""

    def __call__(self, run: Callable[[], torch.Tensor]) -> tuple[Replay, torch.Tensor]:
        output = run().clone()
        return _EagerRun(run, output), output


@dataclass(frozen=True)
class _CapturedBucket:
    replay: Replay
    output: torch.Tensor  # [bucket tokens, hidden], rewritten by every replay


class DecodeGraphs:
    """Captured decode (and verify) forwards, one per key, over one set of static inputs."""

    def __init__(
        self, inputs: StaticDecodeInputs, captured: dict[GraphKey, _CapturedBucket]
    ) -> None:
        self._inputs = inputs
        self._captured = captured
        self._keys = tuple(sorted(captured))

    @classmethod
    def capture(
        cls,
        model: CausalLM,
        kv_caches: list[KVCache],
        shape: DecodeGraphShape,
        capture: GraphCapture,
    ) -> DecodeGraphs:
        device = kv_caches[0][0].device
        inputs = StaticDecodeInputs(shape, device)
        inputs.fill_for_capture()
        captured: dict[GraphKey, _CapturedBucket] = {}
        # Most tokens first: the shared pool is sized by the first capture.
        for key in sorted(shape.keys, key=lambda key: key.num_tokens, reverse=True):
            metadata = inputs.metadata(key)

            def run(
                tokens: int = key.num_tokens, metadata: AttentionMetadata = metadata
            ) -> torch.Tensor:
                return model.forward(
                    inputs.input_ids[:tokens], inputs.positions[:tokens], kv_caches, metadata
                )

            with torch.inference_mode():
                replay, output = capture(run)
            captured[key] = _CapturedBucket(replay, output)
        return cls(inputs, captured)

    @property
    def keys(self) -> tuple[GraphKey, ...]:
        return self._keys

    def key_for(self, inputs: ForwardInputs) -> GraphKey | None:
        """The graph that replays this step, or None when it must run eagerly."""
        metadata = inputs.attn_metadata
        batch, q = metadata.num_seqs, metadata.max_query_len
        shape = self._inputs.shape
        if batch == 0 or q not in shape.tokens_per_seq or inputs.num_tokens != batch * q:
            return None  # a prompt or chunk, or sequences with different proposal counts
        if metadata.max_seq_len > shape.max_seq_len:
            return None
        if metadata.block_tables.shape[1] > shape.max_blocks_per_seq:
            return None
        bucket = next((bucket for bucket in shape.buckets if bucket >= batch), None)
        return None if bucket is None else GraphKey(bucket, q)

    def forward(self, inputs: ForwardInputs, key: GraphKey) -> torch.Tensor:
        """Hidden states [tokens, hidden] of a step, by replaying graph `key`.

        The result is a view of the graph's output buffer: read it before the next replay."""
        self._inputs.stage(inputs, key)
        captured = self._captured[key]
        captured.replay.replay()
        return captured.output[: inputs.num_tokens]


def measure_capture_bytes(
    model: CausalLM, spec: KVCacheSpec, shape: DecodeGraphShape, device: torch.device
) -> int:
    """Device memory the decode graphs hold once captured (their shared pool, the graphs
    themselves, compiled kernels), measured by capturing them against a one-block KV cache and
    throwing them away. Captures only write padding slots, so one block is enough."""
    kv_caches = allocate_kv_cache(spec, 1, device)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    free_before_bytes, _ = torch.cuda.mem_get_info(device)
    graphs = DecodeGraphs.capture(model, kv_caches, shape, CudaGraphCapture(device))
    torch.cuda.synchronize(device)
    free_after_bytes, _ = torch.cuda.mem_get_info(device)
    del graphs, kv_caches
    gc.collect()
    torch.cuda.empty_cache()
    return max(0, free_before_bytes - free_after_bytes)
