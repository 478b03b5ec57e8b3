"""Batched LoRA (layers/lora.py) against PEFT's per-request math: the CPU path that groups
rows by adapter and the gather path a CUDA-graph stand-in uses, on batches that mix adapters,
the base model and prompt chunks of several rows."""

from __future__ import annotations

import pytest
import torch

from ferrite_server.layers.lora import NO_ADAPTER, LoraBatch, add_gathered
from tests.support.lora_cases import INPUT_SIZE, PART_SIZES, mixed_batch, random_layer, reference_delta

# Sequences: (rows, adapter). Unsorted on purpose for the gather path; sorted runs for the
# CPU path come from the same list below.
SEQUENCES = [(3, 1), (1, NO_ADAPTER), (1, 0), (2, 2), (1, 1), (4, NO_ADAPTER), (1, 0)]


def token_adapters_of(sequences: list[tuple[int, int]]) -> list[int]:
    return [adapter for rows, adapter in sequences for _ in range(rows)]


@pytest.mark.parametrize("order", ["as_sent", "by_adapter"])
def test_rows_grouped_by_adapter_match_per_request_math(order: str) -> None:
    case = random_layer()
    sequences = SEQUENCES if order == "as_sent" else sorted(SEQUENCES, key=lambda s: s[1])
    adapters = token_adapters_of(sequences)
    x = torch.randn(len(adapters), INPUT_SIZE, generator=torch.Generator().manual_seed(1))
    base = torch.randn(len(adapters), sum(PART_SIZES))
    batch = mixed_batch([rows for rows, _ in sequences], [adapter for _, adapter in sequences])
    assert batch.runs is not None
    if order == "by_adapter":  # one run per adapter: what the engine's ordering gives
        assert [run[0] for run in batch.runs] == [0, 1, 2]
    y = case.layer.add_to(base.clone(), x, batch)
    expected = base.double() + reference_delta(case, x, adapters)
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-4)


def test_the_gather_path_matches_and_leaves_base_rows_alone() -> None:
    case = random_layer(seed=3)
    adapters = token_adapters_of(SEQUENCES)
    x = torch.randn(len(adapters), INPUT_SIZE, generator=torch.Generator().manual_seed(2))
    base = torch.randn(len(adapters), sum(PART_SIZES))
    only_device = LoraBatch(torch.tensor(adapters, dtype=torch.int32))  # no host runs
    y = case.layer.add_to(base.clone(), x, only_device)
    expected = base.double() + reference_delta(case, x, adapters)
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-4)
    base_rows = [row for row, adapter in enumerate(adapters) if adapter == NO_ADAPTER]
    assert torch.equal(y[base_rows], base[base_rows])
    # The same through the function the layer calls.
    again = add_gathered(base.clone(), x, case.layer.lora_a, case.layer.lora_b, case.layer.parts,
                         only_device.token_adapters)
    torch.testing.assert_close(again, y)


def test_a_batch_without_adapters_is_none() -> None:
    assert LoraBatch.from_sequences([NO_ADAPTER, NO_ADAPTER], [0, 2, 3], torch.device("cpu")) is None
    batch = mixed_batch([2, 1, 3], [0, 0, NO_ADAPTER])
    assert batch.runs == ((0, 0, 3),)  # consecutive rows of one adapter merge
    assert batch.token_adapters.tolist() == [0, 0, 0, -1, -1, -1]
