"""The CPU dtype rule (bfloat16 only where the CPU computes it natively) and the thread count
(one per usable core, split between a node's CPU ranks)."""

from __future__ import annotations

import torch

from ferrite_server.engine import host_cpu, model_runner
from ferrite_server.engine.host_cpu import (
    NATIVE_BF16_FLAGS,
    cgroup_cpu_limit,
    cpu_flags,
    cpu_has_native_bfloat16,
)

EPYC_AVX2 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


def test_flags_are_read_from_the_first_processor() -> None:
    assert cpu_flags(EPYC_AVX2) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert cpu_flags(SAPPHIRE_RAPIDS) & NATIVE_BF16_FLAGS == {"avx512_bf16", "amx_bf16"}
    assert cpu_flags("processor : 0\n") == frozenset()


def test_auto_dtype_on_cpu_follows_the_cpu(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    cpu = torch.device("cpu")
    for native, expected in ((False, torch.float32), (True, torch.bfloat16)):
        monkeypatch.setattr(model_runner, "cpu_has_native_bfloat16", lambda native=native: native)
        assert model_runner.resolve_dtype("auto", cpu, {}) == expected
        assert model_runner.resolve_dtype("bfloat16", cpu, {}) == torch.bfloat16


def test_this_machine_is_read_without_error() -> None:
    assert isinstance(cpu_has_native_bfloat16(), bool)


def test_a_container_cpu_quota_caps_the_usable_cores(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert cgroup_cpu_limit("max 100000\n") is None
    assert cgroup_cpu_limit("150000 100000\n") == 1.5
    assert cgroup_cpu_limit("garbage") is None
    cpu_max = tmp_path / "cpu.max"
    monkeypatch.setattr(host_cpu, "CGROUP_CPU_MAX", cpu_max)
    monkeypatch.setattr(host_cpu.os, "sched_getaffinity", lambda pid: set(range(16)))
    assert host_cpu.usable_cpu_count() == 16  # no cgroup file: the affinity mask
    cpu_max.write_text("150000 100000\n")
    assert host_cpu.usable_cpu_count() == 2  # 1.5 cores of time: two threads, not sixteen


def test_cpu_ranks_of_one_node_split_the_threads(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(host_cpu, "usable_cpu_count", lambda: 8)
    previous = torch.get_num_threads()
    try:
        assert host_cpu.set_cpu_threads(local_world_size=1) == 8 == torch.get_num_threads()
        assert host_cpu.set_cpu_threads(local_world_size=3) == 2 == torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def test_small_steps_run_on_one_thread_large_ones_on_all() -> None:
    threads = host_cpu.StepThreads(all_threads=4, single_thread_max_rows=8)
    assert [threads.threads_for(rows) for rows in (1, 8, 9, 512)] == [1, 1, 4, 4]
    never = host_cpu.StepThreads(all_threads=4)
    assert never.threads_for(1) == 4
    previous = torch.get_num_threads()
    try:
        threads.use_for(3)
        assert torch.get_num_threads() == 1
        threads.use_all()
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(previous)
