"""A CPU engine runs a small step's forward on one torch thread and a large one's on all
(`--cpu-single-thread-max-rows`), its LM head and sampling on all, with the same tokens as an
engine that always uses every thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ferrite_server.engine.types import (
    NewRequest,
    RequestParams,
    RunningRequest,
    StepInput,
    StoppingParams,
)
from tests.support.engines import warmed_up_engine
from tests.support.tiny_models import TinyModelSpec, write_tiny_model

ALL_THREADS = 2
SINGLE_THREAD_MAX_ROWS = 4
PROMPT = (5, 6, 7, 8, 9, 10)  # more rows than SINGLE_THREAD_MAX_ROWS


@pytest.fixture
def two_torch_threads() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(ALL_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("step-threads"), TinyModelSpec(seed=5))


def _generate(model_dir: Path, single_thread_max_rows: int) -> tuple[list[int], list[tuple[str, int]]]:
    """Greedy tokens of PROMPT and, per step, the torch threads of its forward and sampling."""
    engine, _ = warmed_up_engine(model_dir, cpu_single_thread_max_rows=single_thread_max_rows)
    seen: list[tuple[str, int]] = []
    runner = engine._runner
    forward, compute_logits = runner.forward, runner.compute_logits

    def recording_forward(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(("forward", torch.get_num_threads()))
        return forward(*args, **kwargs)

    def recording_logits(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(("logits", torch.get_num_threads()))
        return compute_logits(*args, **kwargs)

    runner.forward, runner.compute_logits = recording_forward, recording_logits
    params = RequestParams(stopping=StoppingParams(max_new_tokens=4, ignore_eos=True))
    new = NewRequest(1, PROMPT, len(PROMPT), 0, len(PROMPT), (0, 1, 2), params)
    output = engine.step(StepInput(new_requests=(new,)))
    tokens = [output.generations[0].tokens[-1].token_id]
    for _ in range(3):
        running = RunningRequest(1, (tokens[-1],), (), 1)
        output = engine.step(StepInput(running_requests=(running,)))
        tokens.append(output.generations[0].tokens[-1].token_id)
    return tokens, seen


@pytest.mark.usefixtures("two_torch_threads")
def test_small_steps_forward_on_one_thread_with_the_same_tokens(model_dir: Path) -> None:
    tokens, seen = _generate(model_dir, SINGLE_THREAD_MAX_ROWS)
    prefill, *decodes = [seen[i : i + 2] for i in range(0, len(seen), 2)]
    assert prefill == [("forward", ALL_THREADS), ("logits", ALL_THREADS)]
    assert decodes == [[("forward", 1), ("logits", ALL_THREADS)]] * 3
    always_all_tokens, always_all = _generate(model_dir, 0)
    assert {threads for _, threads in always_all} == {ALL_THREADS}
    assert tokens == always_all_tokens
