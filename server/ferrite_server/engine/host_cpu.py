"""What the host CPU can do natively (read once from /proc/cpuinfo on Linux), and how many
of its cores this process may use."""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ferrite_server.engine.step_thread_choice import MeasuredThreadChoice

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

# cgroup v2's CPU bandwidth limit of this process's group ("max 100000" or "200000 100000").
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")

# x86 feature flags for bf16 arithmetic in hardware: AVX-512 BF16 and AMX tiles.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo_text: str) -> frozenset[str]:
    """The feature flags of the first processor listed ("flags" on x86, "Features" on Arm)."""
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache  # a fact about the machine: read once per process
def cpu_has_native_bfloat16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = cpu_flags(text)
    # Arm: SVE/NEON bf16 instructions are flagged "bf16".
    return bool(flags & NATIVE_BF16_FLAGS) or "bf16" in flags


def cgroup_cpu_limit(cpu_max_text: str) -> float | None:
    """Cores' worth of CPU time a cgroup v2 `cpu.max` grants ("quota period"); None: no limit."""
    parts = cpu_max_text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        return int(parts[0]) / int(parts[1])
    except (ValueError, ZeroDivisionError):
        return None


def usable_cpu_count() -> int:
    """Cores this process may run on: its affinity mask, capped by a container's CPU quota
    (`docker --cpus 2` on a 16-core host leaves 16 in the mask but 2 cores of time)."""
    count = len(os.sched_getaffinity(0))
    try:
        limit = cgroup_cpu_limit(CGROUP_CPU_MAX.read_text())
    except OSError:
        limit = None
    if limit is not None:
        count = min(count, max(1, math.ceil(limit)))
    return count


def set_cpu_threads(local_world_size: int) -> int:
    """One torch intra-op thread per usable core, split between this node's CPU ranks: more
    threads than cores make each parallel region wait for a thread that is not running (and
    ranks wait for the slowest at each collective; torchrun sets one thread per rank for the
    same reason). Returns the thread count."""
    import torch

    cores = usable_cpu_count()
    threads = max(1, cores // max(1, local_world_size))
    torch.set_num_threads(threads)
    logger.info("torch runs %d thread(s) on %d usable core(s)", threads, cores)
    return threads


# Small steps right after a large one (a prompt's prefill) are not timed for the measured
# choice: through the server the first two decode steps of a request took 2-4x the others on
# either thread count (the prefill has just evicted the weights from the caches), and such a
# time made the choice give up the faster count (bench/RESULTS.md, native decode).
SETTLING_SMALL_STEPS = 2


@dataclass
class StepThreads:
    """How many torch threads one CPU step runs on: all of them for a step of many rows
    (prefill, large batches: arithmetic the threads split); for a small step of at most
    `single_thread_max_rows` rows either one, or, with `measured`, whichever of one and all
    the step times measure faster now (step_thread_choice.py).

    A small step is bound by reading the weights. With sleeping idle threads
    (`--omp-wait-policy passive`) each of its ~400 parallel regions pays a wake-up that costs
    more than the second thread saves: a batch-1 int4 forward took 16-19 ms on one thread and
    26-32 ms on two (bench/RESULTS.md), and the core left idle runs the router and the shard's
    host work meanwhile. With briefly spinning threads (`adaptive`) two threads are ~15% faster
    on free cores and ~5x slower beside a busy process, hence the measurement (of the whole
    step: forward, LM head and sampling on the chosen count). Otherwise the LM head and
    sampling (few regions, the largest product) run on all threads."""

    all_threads: int
    single_thread_max_rows: int = 0  # 0: every step runs on all threads
    measured: MeasuredThreadChoice | None = None
    _small_steps_in_a_row: int = field(default=SETTLING_SMALL_STEPS, init=False)

    def threads_for(self, rows: int) -> int:
        if rows > self.single_thread_max_rows:
            return self.all_threads
        return self.measured.choose(time.monotonic()) if self.measured is not None else 1

    def use_for(self, rows: int) -> int:
        """Set this thread's torch thread count for a forward of `rows` rows and return it
        (OpenMP's count is per calling thread: call it on the thread that runs the step)."""
        threads = self.threads_for(rows)
        _set_torch_threads(threads)
        return threads

    def use_for_logits(self, rows: int, forward_threads: int) -> None:
        """The thread count for the LM head and sampling of a step whose forward ran on
        `forward_threads`: all threads, except that a measured small step keeps its count (two
        spinning threads beside a busy process slow the head down as they do the forward)."""
        _set_torch_threads(forward_threads if self._is_measured(rows) else self.all_threads)

    def record_step(self, rows: int, threads: int, seconds: float) -> None:
        """How long the forward, LM head and sampling of a step of `rows` rows on `threads`
        threads took (small steps feed the measured choice, except the first few after a
        large step, see SETTLING_SMALL_STEPS)."""
        if not self._is_measured(rows):
            self._small_steps_in_a_row = 0
            return
        self._small_steps_in_a_row += 1
        if self.measured is not None and self._small_steps_in_a_row > SETTLING_SMALL_STEPS:
            self.measured.record(threads, seconds, time.monotonic())

    def _is_measured(self, rows: int) -> bool:
        """A small step whose thread count the measured choice picks."""
        return self.measured is not None and rows <= self.single_thread_max_rows


def step_threads_for(
    all_threads: int, single_thread_max_rows: int, measured: bool, dtype: torch.dtype
) -> StepThreads:
    """`measured` only for a model that computes in bfloat16: its products and attention round
    the same on any thread count (checked op by op), where float32 attention does not, and a
    greedy float32 answer must not depend on the machine's load."""
    import torch

    choice = None
    if measured and dtype == torch.bfloat16 and all_threads > 1 and single_thread_max_rows > 0:
        choice = MeasuredThreadChoice(counts=(1, all_threads))
    return StepThreads(all_threads, single_thread_max_rows, choice)


def _set_torch_threads(threads: int) -> None:
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
