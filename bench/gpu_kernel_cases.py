"""Shared pieces of bench/gpu_kernels.py: problem sizes, random paged batches, timers.

Triton decides interpreter-or-compile when a kernel is defined, so ferrite's kernel modules
are imported only by load_kernels(), after the caller has set TRITON_INTERPRET (or not).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import triton.testing

REPO_ROOT = Path(__file__).resolve().parent.parent
Lens = tuple[tuple[int, ...], tuple[int, ...]]  # (query_lens, seq_lens) of one batch


@dataclass(frozen=True)
class BenchSizes:
    """Problem sizes for one mode (GPU or CPU smoke)."""

    device: str
    dtypes: tuple[str, ...]  # dtypes of the correctness checks
    copy_bytes: int
    matmul_n: int
    kv_write_tokens: int
    decode_configs: tuple[tuple[int, int], ...]  # (batch, context tokens)
    prefill_configs: tuple[Lens, ...]
    check_seq_lens: tuple[int, ...]  # ragged decode contexts for correctness
    check_chunk: Lens  # a mixed varlen batch (prompts, chunks after prefixes, decodes)
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    block_size: int = 16

    @property
    def timing_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.device == "cuda" else torch.float32


GPU_SIZES = BenchSizes(
    device="cuda",
    dtypes=("bfloat16", "float16"),
    copy_bytes=2 << 30,
    matmul_n=8192,
    kv_write_tokens=16384,
    decode_configs=((64, 4096), (256, 1024), (8, 32768), (1, 4096), (1, 32768)),
    prefill_configs=(
        ((4096,) * 4, (4096,) * 4),  # 4 whole 4096-token prompts
        ((2048,), (8192,)),  # a 2048-token chunk after a 6144-token cached prefix
        ((512,) * 16, (512,) * 16),  # 16 short prompts
    ),
    check_seq_lens=(1, 15, 16, 17, 300, 1000, 2049, 4096, 4095, 777, 3, 64),
    check_chunk=((1000, 512, 1, 1, 37, 2048), (1000, 3512, 4096, 17, 37, 2048)),
)
CPU_SMOKE_SIZES = BenchSizes(
    device="cpu",
    dtypes=("float32", "float16"),  # the interpreter is wrong for bfloat16
    copy_bytes=1 << 20,
    matmul_n=128,
    kv_write_tokens=16,
    decode_configs=((2, 128),),
    prefill_configs=(((64, 20), (64, 90)),),
    check_seq_lens=(1, 17, 130),
    check_chunk=((40, 1, 20), (40, 33, 84)),
    num_heads=4,
    num_kv_heads=2,
    head_dim=64,
)


@dataclass(frozen=True)
class Row:
    """One line of the printed table (and of the JSON's "rows")."""

    section: str
    config: str
    metric: str
    value: float
    note: str = ""


@dataclass(frozen=True)
class Kernels:
    """ferrite's launchers and types, imported late (see module docstring)."""

    write_kv: Callable[..., None]
    decode: Callable[..., torch.Tensor]
    varlen: Callable[..., torch.Tensor]
    decode_tiles: type
    varlen_tiles: type
    inputs: type  # PagedAttentionInputs
    metadata: type  # AttentionMetadata
    reference: Any  # TorchAttentionBackend()


def load_kernels() -> Kernels:
    sys.path.insert(0, str(REPO_ROOT / "server"))
    from ferrite_server.kernels import kv_write, paged_decode_attention, varlen_prefill_attention
    from ferrite_server.kernels.attention_inputs import PagedAttentionInputs
    from ferrite_server.layers.attention.backend import AttentionMetadata
    from ferrite_server.layers.attention.torch_backend import TorchAttentionBackend

    return Kernels(
        write_kv=kv_write.write_kv,
        decode=paged_decode_attention.paged_decode_attention,
        varlen=varlen_prefill_attention.varlen_prefill_attention,
        decode_tiles=paged_decode_attention.DecodeTiles,
        varlen_tiles=varlen_prefill_attention.VarlenTiles,
        inputs=PagedAttentionInputs,
        metadata=AttentionMetadata,
        reference=TorchAttentionBackend(),
    )


def bench_ms(fn: Callable[[], Any], device: str) -> float:
    """Median milliseconds per call: triton's do_bench on CUDA (L2 flushed between calls),
    a plain timer on CPU."""
    if device == "cuda":
        return float(triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"))
    fn()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[1]


def make_batch(kernels: Kernels, sizes: BenchSizes, dtype: torch.dtype, lens: Lens) -> Any:
    """PagedAttentionInputs: random query and caches, shuffled disjoint block tables."""
    query_lens, seq_lens = lens
    bs, device = sizes.block_size, sizes.device
    blocks_per_seq = [-(-n // bs) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + 4
    order = torch.randperm(num_blocks, device=device).to(torch.int32)
    tables = torch.zeros(len(seq_lens), max(blocks_per_seq), dtype=torch.int32, device=device)
    slots, start = [], 0
    for s, (q_len, seq_len) in enumerate(zip(query_lens, seq_lens)):
        tables[s, : blocks_per_seq[s]] = order[start : start + blocks_per_seq[s]]
        start += blocks_per_seq[s]
        positions = torch.arange(seq_len - q_len, seq_len, device=device)
        slots.append(tables[s, positions // bs].long() * bs + positions % bs)
    starts = [0]
    for q_len in query_lens:
        starts.append(starts[-1] + q_len)
    metadata = kernels.metadata(
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=tables,
        slot_mapping=torch.cat(slots),
        max_query_len=max(query_lens),
        max_seq_len=max(seq_lens),
        query_start_loc_cpu=tuple(starts),
        seq_lens_cpu=tuple(seq_lens),
    )
    cache_shape = (num_blocks, bs, sizes.num_kv_heads, sizes.head_dim)
    query = torch.randn(starts[-1], sizes.num_heads, sizes.head_dim, device=device, dtype=dtype)
    key_cache = torch.randn(cache_shape, device=device, dtype=dtype)
    value_cache = torch.randn(cache_shape, device=device, dtype=dtype)
    return kernels.inputs(query, key_cache, value_cache, metadata, sizes.head_dim**-0.5)


def decode_lens(batch: int, context: int) -> Lens:
    return (1,) * batch, (context,) * batch


def kv_bytes_read(sizes: BenchSizes, batch: int, context: int, dtype: torch.dtype) -> int:
    """Bytes of K and V a decode step reads: every cached token, every KV head."""
    return 2 * batch * context * sizes.num_kv_heads * sizes.head_dim * dtype.itemsize


def decode_graph_ms(
    kernels: Kernels, sizes: BenchSizes, batch: int, context: int, tiles: Any = None
) -> float:
    """Per-call ms of decode replayed from one CUDA graph (as the shard runs decode), over
    enough distinct caches that L2 cannot serve them: launch overhead out, HBM traffic in."""
    dtype = sizes.timing_dtype
    l2_bytes = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    copies = max(1, min(16, math.ceil(4 * l2_bytes / kv_bytes_read(sizes, batch, context, dtype))))
    batches = [
        make_batch(kernels, sizes, dtype, decode_lens(batch, context)) for _ in range(copies)
    ]
    outs = [torch.empty_like(inputs.query) for inputs in batches]
    tiles = tiles or kernels.decode_tiles()

    def run_all() -> None:
        for inputs, out in zip(batches, outs):
            kernels.decode(inputs, out, tiles)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run_all()  # compile and warm up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run_all()
    replay_ms = triton.testing.do_bench(graph.replay, warmup=10, rep=200, return_mode="median")
    return float(replay_ms) / copies


def causal_flops(lens: Lens, num_heads: int, head_dim: int) -> float:
    """4 * D FLOPs per (query, visible key) pair per head: QK^T and PV, 2 FLOPs per MAC.

    New token i of a sequence with q_len new tokens after `prefix` cached ones sees
    prefix + i + 1 keys.
    """
    pairs = 0
    for q_len, seq_len in zip(*lens):
        prefix = seq_len - q_len
        pairs += q_len * prefix + q_len * (q_len + 1) // 2
    return 4.0 * head_dim * num_heads * pairs


def ratio_note(value: float, reference: float | None, what: str) -> str:
    return f"{100 * value / reference:.0f}% {what}" if reference else ""
