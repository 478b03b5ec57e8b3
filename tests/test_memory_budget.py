"""The GPU's KV budget under --cuda-memory-fraction (TGI's flag): what is left of that share
of the device after everything already on it and the warmup's peak."""

from __future__ import annotations

import pytest

from ferrite_server.config import ShardConfig
from ferrite_server.engine.memory import kv_budget_bytes

GIB = 1 << 30


def test_the_fraction_caps_the_whole_process_not_only_the_kv_cache() -> None:
    # 80 GiB device, 20 GiB used (weights, context), 4 GiB activation peak.
    total, free, peak = 80 * GIB, 60 * GIB, 4 * GIB
    assert kv_budget_bytes(total, free, peak, 1.0) == 56 * GIB
    assert kv_budget_bytes(total, free, peak, 0.5) == 16 * GIB
    assert kv_budget_bytes(total, free, peak, 0.9) == pytest.approx(48 * GIB, abs=1)


def test_a_fraction_below_what_is_used_leaves_nothing() -> None:
    assert kv_budget_bytes(80 * GIB, 60 * GIB, 4 * GIB, 0.25) < 0


def test_the_default_is_ferrite_s_ninety_percent() -> None:
    assert ShardConfig.cuda_memory_fraction == 0.9
