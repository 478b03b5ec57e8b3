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
        assert threads.use_for(3) == 1 == torch.get_num_threads()
        threads.use_for_logits(3, 1)  # the LM head of a fixed rule's small step: all threads
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(previous)


def test_measured_small_steps_take_the_faster_count_and_large_steps_all() -> None:
    threads = host_cpu.step_threads_for(4, 8, measured=True, dtype=torch.bfloat16)
    assert threads.measured is not None
    seconds_by_count = {1: 0.020, 4: 0.012}
    for rows in (1, 2, 1, 2):  # two steps on each count (the first after a change untimed)
        count = threads.threads_for(rows)
        threads.record_step(rows, count, seconds_by_count[count])
    assert threads.threads_for(1) == 4 == threads.measured.in_use
    threads.record_step(512, 4, 5.0)  # a prefill's time says nothing about small steps
    assert threads.measured.in_use == 4
    assert threads.threads_for(512) == 4
    # Nor do the first small steps after it (cold caches): however slow, they are not timed.
    for _ in range(host_cpu.SETTLING_SMALL_STEPS):
        threads.record_step(1, 4, 1.0)
    assert threads.measured.in_use == 4
    threads.record_step(1, 4, 1.0)  # settled: two 50x slower steps are a busy neighbour
    threads.record_step(1, 4, 1.0)
    assert threads.measured.in_use == 1
    previous = torch.get_num_threads()
    try:  # a measured small step's LM head keeps the step's count
        threads.use_for_logits(1, 1)
        assert torch.get_num_threads() == 1
        threads.use_for_logits(512, 1)
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(previous)


def test_float32_small_steps_stay_on_one_thread_even_when_measured_is_asked() -> None:
    # float32 attention rounds differently on 1 and 2 threads: a greedy answer must not
    # depend on the load, so only bfloat16 measures.
    for dtype, measured in ((torch.float32, True), (torch.bfloat16, False)):
        threads = host_cpu.step_threads_for(2, 8, measured=measured, dtype=dtype)
        assert threads.measured is None
        assert threads.threads_for(1) == 1
    one_core = host_cpu.step_threads_for(1, 8, measured=True, dtype=torch.bfloat16)
    assert one_core.measured is None


def test_bfloat16_decode_products_and_attention_round_the_same_on_any_thread_count() -> None:
    """What lets the measured choice change thread counts mid-request: a bfloat16 step's
    products and its decode attention give the same bits on one thread and on two."""
    from ferrite_server.layers.attention.torch_attention_math import attend
    from ferrite_server.layers.quantization.weight_only_ops import (
        CpuInt4Linear,
        CpuInt8Linear,
        quantize_int4,
        quantize_int8,
    )

    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 64, generator=generator)
    int4, int8 = CpuInt4Linear(quantize_int4(weight, 32)), CpuInt8Linear(quantize_int8(weight))
    rows = torch.randn(3, 64, generator=generator).to(torch.bfloat16)
    query = torch.randn(2, 6, 1, 64, generator=generator).to(torch.bfloat16)
    keys = torch.randn(2, 2, 300, 64, generator=generator).to(torch.bfloat16)
    values = torch.randn(2, 2, 300, 64, generator=generator).to(torch.bfloat16)
    mask = (torch.arange(300)[None, :] < torch.tensor([[300], [123]]))[:, None, None, :]

    def step_results() -> list[torch.Tensor]:
        return [
            torch.nn.functional.linear(rows, weight.to(torch.bfloat16)),
            int4(rows),
            int8(rows),
            attend(query, keys, values, mask, 0.125, None),
            attend(query, keys, values, None, 0.125, 30.0),
        ]

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = step_results()
        torch.set_num_threads(2)
        two = step_results()
    finally:
        torch.set_num_threads(previous)
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))
