"""Random-token prompts of chosen lengths: a workload that needs no dataset and whose shape
(input/output lengths) is exactly controlled.

Each prompt is a seeded draw of non-special token ids, decoded to text, re-encoded and cut to
the drawn length so that the text the server tokenizes has (about) that many tokens; its
recorded `prompt_len` is the re-encoded count. Lengths are drawn uniformly from
`[len * (1 - range_ratio), len * (1 + range_ratio)]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ferrite_benchmark.records import BenchRequest


@dataclass(frozen=True)
class RandomShape:
    input_len: int = 128
    output_len: int = 64
    range_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.input_len < 1 or self.output_len < 1:
            raise ValueError("random input and output lengths must be >= 1")
        if not 0.0 <= self.range_ratio < 1.0:
            raise ValueError(f"range_ratio must be in [0, 1), got {self.range_ratio}")

    def bounds(self, length: int) -> tuple[int, int]:
        low = max(1, math.floor(length * (1 - self.range_ratio)))
        return low, max(low, math.ceil(length * (1 + self.range_ratio)))


def sample_random(
    tokenizer: Any, num_prompts: int, shape: RandomShape, seed: int
) -> list[BenchRequest]:
    rng = np.random.default_rng(seed)
    special_ids = set(tokenizer.all_special_ids)
    allowed_ids = np.array([i for i in range(len(tokenizer)) if i not in special_ids])
    in_low, in_high = shape.bounds(shape.input_len)
    out_low, out_high = shape.bounds(shape.output_len)
    requests = []
    for _ in range(num_prompts):
        input_len = int(rng.integers(in_low, in_high + 1))
        output_len = int(rng.integers(out_low, out_high + 1))
        token_ids = rng.choice(allowed_ids, size=input_len).tolist()
        text = tokenizer.decode(token_ids)
        # Decoding then encoding can merge or split tokens: cut back to the drawn length.
        reencoded = tokenizer(text, add_special_tokens=False).input_ids[:input_len]
        prompt = tokenizer.decode(reencoded)
        prompt_len = len(tokenizer(prompt).input_ids)
        requests.append(BenchRequest(prompt, prompt_len, output_len))
    return requests
