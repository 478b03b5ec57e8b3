"""When and how the engine's decode CUDA graphs are set up during warmup (engine/cuda_graphs.py
holds the graphs themselves).

Order in Engine.warmup: the largest step is measured, then `shape()` says what to capture (or
None), `measure()` captures it once against a throw-away one-block KV cache to learn the memory
it holds, the KV cache is sized with that memory reserved, and `capture()` captures for real
against the real cache. A forward that cannot be captured turns graphs off with a warning: the
shard serves eagerly rather than not at all.
"""

from __future__ import annotations

import logging
import time

import torch

from ferrite_server.config import ShardConfig
from ferrite_server.engine.cuda_graphs import (
    CudaGraphCapture,
    DecodeGraphs,
    DecodeGraphShape,
    GraphCapture,
    decode_buckets,
    measure_capture_bytes,
)
from ferrite_server.engine.model_runner import ModelRunner
from ferrite_server.models.interface import KVCache

logger = logging.getLogger(__name__)


class DecodeGraphSetup:
    def __init__(
        self, runner: ModelRunner, config: ShardConfig, capture: GraphCapture | None = None
    ) -> None:
        """`capture`: None captures CUDA graphs on a CUDA device (tests on a CPU pass
        cuda_graphs.EagerReplay to run the same padded-bucket path)."""
        self._runner = runner
        self._config = config
        self._capture = capture

    def shape(
        self, max_batch_size: int, max_total_tokens: int, num_speculative_tokens: int = 0
    ) -> DecodeGraphShape | None:
        """What to capture, or None: graphs need CUDA, and attention whose kernels take every
        length from device tensors (the torch backend reads host copies, which a graph would
        freeze), and a native model (the transformers fallback may read host values). With
        speculation, verify steps of N + 1 tokens per sequence get graphs beside decodes."""
        facts = self._runner.facts
        capturable = facts.device.type == "cuda" or self._capture is not None
        if not capturable or facts.attention_backend != "triton":
            return None
        if facts.implementation != "native":
            return None
        buckets = decode_buckets(max_batch_size, self._config.cuda_graph_batch_sizes)
        if not buckets:
            return None
        speculates = self._config.speculative_method is not None and num_speculative_tokens > 0
        return DecodeGraphShape(
            buckets, max_total_tokens, self._config.block_size_tokens,
            has_lora=bool(facts.lora_adapters),
            tokens_per_seq=(1, num_speculative_tokens + 1) if speculates else (1,),
        )

    def measure(
        self, shape: DecodeGraphShape
    ) -> tuple[int, DecodeGraphShape | None]:
        """(bytes the graphs need, the shape to capture — None when capture is impossible)."""
        facts = self._runner.facts
        if facts.device.type != "cuda":
            return 0, shape  # nothing to measure: graphs stand-ins hold host memory
        spec = self._runner.kv_cache_spec(self._config.block_size_tokens)
        try:
            graph_bytes = measure_capture_bytes(self._runner.model, spec, shape, facts.device)
        except Exception as error:  # a layer that cannot be captured: serve eagerly
            logger.warning(
                "CUDA graphs off: capturing the decode forward failed (%s: %s); decode runs "
                "eagerly (--cuda-graphs 0 skips the attempt)", type(error).__name__, error,
            )
            torch.cuda.synchronize(facts.device)
            torch.cuda.empty_cache()
            return 0, None
        logger.info(
            "CUDA graphs for decode batch sizes %s (new tokens per sequence: %s) need %.1f MiB "
            "(reserved before the KV cache)", ",".join(map(str, shape.buckets)),
            ",".join(map(str, shape.tokens_per_seq)), graph_bytes / 2**20,
        )
        return graph_bytes, shape

    def capture(
        self, shape: DecodeGraphShape, kv_caches: list[KVCache]
    ) -> DecodeGraphs:
        started_s = time.perf_counter()
        capture = self._capture or CudaGraphCapture(self._runner.facts.device)
        graphs = DecodeGraphs.capture(self._runner.model, kv_caches, shape, capture)
        logger.info(
            "captured %d decode CUDA graphs in %.1f s", len(graphs.keys),
            time.perf_counter() - started_s,
        )
        return graphs
