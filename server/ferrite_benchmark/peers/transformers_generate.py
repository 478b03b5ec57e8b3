"""transformers `generate` as a peer: batch 1 for latency, a static batch for serving.

The model is loaded from the same checkpoint directory ferrite serves, in the same dtype, and
decodes greedily with the KV cache, which is how a user would run it. Every decode step is
timed through a streamer (transformers calls `put` once with the prompt, then once per step
with the new tokens of every row). Static batches are left-padded; a per-row stopping criterion
ends each row at its own `max_new_tokens`, while the batch runs until its last row is done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferrite_benchmark.latency import LatencyTarget
from ferrite_benchmark.peers.base import PeerInfo, package_version
from ferrite_benchmark.peers.static_batches import chunks, record_from_steps, row_output_len
from ferrite_benchmark.records import BenchRequest, RequestRecord
from ferrite_benchmark.runner import RunResult


@dataclass(frozen=True)
class TransformersSettings:
    model_dir: Path
    dtype: str = "bfloat16"  # a torch dtype name
    static_batch_size: int = 16
    num_threads: int | None = None  # torch intra-op threads; None keeps torch's default


class _StepClock:
    """A transformers streamer that only notes when each decode step's tokens exist."""

    def __init__(self) -> None:
        self.step_times_s: list[float] = []
        self._prompt_seen = False

    def put(self, value: Any) -> None:
        if not self._prompt_seen:  # the first call carries the prompt, not a new token
            self._prompt_seen = True
            return
        self.step_times_s.append(time.perf_counter())

    def end(self) -> None:
        pass


class TransformersPeer:
    def __init__(self, settings: TransformersSettings) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if settings.num_threads:
            torch.set_num_threads(settings.num_threads)
        self.settings = settings
        self.static_batch_size = settings.static_batch_size
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(settings.model_dir), padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(
            str(settings.model_dir), dtype=getattr(torch, settings.dtype)
        ).eval()
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = frozenset(eos if isinstance(eos, list) else [eos])
        self.info = PeerInfo(
            name="transformers generate",
            precision=settings.dtype,
            version=package_version("transformers"),
            how=(f"torch {torch.__version__}, {torch.get_num_threads()} threads, greedy, KV cache; "
                 f"serving: static batches of {settings.static_batch_size} in arrival order, left-padded"),
        )

    def _generate(self, prompts: list[str], max_new_tokens: list[int]) -> tuple[Any, int, _StepClock]:
        from transformers import StoppingCriteria, StoppingCriteriaList

        torch = self.torch
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True)
        prompt_width = inputs.input_ids.shape[1]
        limits = torch.tensor(max_new_tokens)

        class PerRowLimit(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full_like(limits, input_ids.shape[1] - prompt_width) >= limits

        clock = _StepClock()
        with torch.inference_mode():
            output = self.model.generate(
                **inputs, max_new_tokens=max(max_new_tokens), do_sample=False,
                stopping_criteria=StoppingCriteriaList([PerRowLimit()]), streamer=clock,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return output, prompt_width, clock

    def _records(self, batch: list[BenchRequest], send_time_s: float) -> list[RequestRecord]:
        output, prompt_width, clock = self._generate([r.prompt for r in batch], [r.output_len for r in batch])
        records = []
        for row, request in enumerate(batch):
            new_ids = output[row, prompt_width:].tolist()
            count = row_output_len(new_ids, self.eos_ids, request.output_len)
            text = self.tokenizer.decode(new_ids[:count], skip_special_tokens=True)
            records.append(record_from_steps(request, send_time_s, clock.step_times_s, count, text))
        return records

    def latency_target(self) -> LatencyTarget:
        return lambda request: self._records([request], time.perf_counter())[0]

    def run_static_batches(self, requests: list[BenchRequest]) -> RunResult:
        start_s = time.perf_counter()
        records: list[RequestRecord] = []
        for batch in chunks(requests, self.static_batch_size):
            records += self._records(batch, start_s)
        return RunResult(records, time.perf_counter() - start_s)
