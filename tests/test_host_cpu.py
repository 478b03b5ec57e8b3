"""The CPU dtype rule: bfloat16 only where the CPU computes it natively."""

from __future__ import annotations

import torch

from ferrite_server.engine import model_runner
from ferrite_server.engine.host_cpu import NATIVE_BF16_FLAGS, cpu_flags, cpu_has_native_bfloat16

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
