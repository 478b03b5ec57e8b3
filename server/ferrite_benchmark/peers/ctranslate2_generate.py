"""ctranslate2 `Generator` as a peer: batch 1 for latency, a static batch for serving.

Runs the converted model (see ctranslate2_convert) greedily (`sampling_topk=1`) with the same
token ids as the model's tokenizer produces. ctranslate2 calls back once per generated token of
each row (with the row's index in the input list), which timestamps the tokens; returning True
from the callback ends that row, which is how each row stops at its own `max_new_tokens`.

The serving workload uses ctranslate2's own batching, as its documentation recommends: all
requests in one call with `max_batch_size`, which sorts them by length and splits them into
batches to minimize padding. (Within a batch ctranslate2 feeds prompt tokens beyond the
shortest prompt through its decoding loop, one step each, so arrival-order batches of mixed
lengths would be much slower.)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferrite_benchmark.latency import LatencyTarget
from ferrite_benchmark.peers.base import PeerInfo, package_version
from ferrite_benchmark.peers.ctranslate2_convert import ensure_ctranslate2_model
from ferrite_benchmark.peers.static_batches import record_from_steps
from ferrite_benchmark.records import BenchRequest, RequestRecord
from ferrite_benchmark.runner import RunResult


@dataclass(frozen=True)
class Ctranslate2Settings:
    model_dir: Path  # the Hugging Face checkpoint to convert
    cache_dir: Path  # where converted models are kept
    compute_type: str = "float32"  # on CPU: float32, int8 or int8_float32
    static_batch_size: int = 16
    num_threads: int = 0  # 0: every core


class Ctranslate2Peer:
    def __init__(self, settings: Ctranslate2Settings) -> None:
        import ctranslate2
        from transformers import AutoTokenizer

        self.settings = settings
        self.static_batch_size = settings.static_batch_size
        threads = settings.num_threads or os.cpu_count() or 1
        converted = ensure_ctranslate2_model(settings.model_dir, settings.cache_dir, settings.compute_type)
        self.generator = ctranslate2.Generator(
            str(converted), device="cpu", compute_type=settings.compute_type, intra_threads=threads
        )
        self.tokenizer = AutoTokenizer.from_pretrained(str(settings.model_dir))
        self.info = PeerInfo(
            name="ctranslate2",
            precision=settings.compute_type,
            version=package_version("ctranslate2"),
            how=(f"{threads} threads, greedy; serving: its own batching, max_batch_size "
                 f"{settings.static_batch_size} (sorted by length)"),
        )

    def _tokens(self, prompt: str) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(self.tokenizer(prompt).input_ids)

    def _records(self, batch: list[BenchRequest], send_time_s: float,
                 max_batch_size: int = 0) -> list[RequestRecord]:
        times_s: list[list[float]] = [[] for _ in batch]
        ids: list[list[int]] = [[] for _ in batch]

        def on_token(step: Any) -> bool:
            row = step.batch_id
            times_s[row].append(time.perf_counter())
            ids[row].append(step.token_id)
            return len(ids[row]) >= batch[row].output_len  # True ends this row

        self.generator.generate_batch(
            [self._tokens(r.prompt) for r in batch], max_batch_size=max_batch_size,
            max_length=max(r.output_len for r in batch),
            sampling_topk=1, include_prompt_in_result=False, return_end_token=True, callback=on_token,
        )
        return [
            record_from_steps(request, send_time_s, times_s[row], len(ids[row]),
                              self.tokenizer.decode(ids[row], skip_special_tokens=True))
            for row, request in enumerate(batch)
        ]

    def latency_target(self) -> LatencyTarget:
        return lambda request: self._records([request], time.perf_counter())[0]

    def run_static_batches(self, requests: list[BenchRequest]) -> RunResult:
        start_s = time.perf_counter()
        records = self._records(requests, start_s, max_batch_size=self.static_batch_size)
        return RunResult(records, time.perf_counter() - start_s)
