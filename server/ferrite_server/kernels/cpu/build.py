"""Compiling and loading the native CPU kernels (torch's C++ extension builder).

A shard compiles `decoder_stack.cpp` the first time it starts with a given source, torch and
CPU (~1 minute on 2 cores) into a directory named by their hash; later starts load it.
`-march=native`: the elementwise loops and the attention's dot products are only fast when the
compiler may use the CPU's vector width, and the build never leaves the machine it ran on (the
CPU's flags are part of the hash).

OpenMP: the source is compiled with `-fopenmp` for `at::parallel_for`, but not linked against
the system's libgomp, so its OpenMP calls resolve to the runtime torch itself loaded (one
thread pool, sized by torch.set_num_threads) rather than to a second runtime.

Any failure (no compiler, no ninja, a build error) is reported to the caller, which runs the
Python layers instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).parent
DECODER_STACK_SOURCE = SOURCE_DIR / "decoder_stack.cpp"
COMPILE_FLAGS = ("-O3", "-march=native", "-fopenmp")  # the C++ standard: torch's own


class NativeBuildError(RuntimeError):
    """The native kernels could not be compiled or loaded here."""


def _cpu_flags() -> str:
    """The CPU's feature flags (what -march=native compiles for); the machine name elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_key(source_dir: Path = SOURCE_DIR) -> str:
    """What the compiled module depends on: every source, torch, the CPU, the flags."""
    digest = hashlib.sha256()
    sources = [path.read_bytes() for path in sorted(source_dir.glob("*.[ch]*"))]
    for part in (*sources, torch.__version__.encode(), _cpu_flags().encode(),
                 " ".join(COMPILE_FLAGS).encode()):
        digest.update(part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """torch's builder runs `ninja` from PATH; the `ninja` package's binary sits in the Python
    environment's scripts directory, which is not on PATH when the launcher is started by its
    full path without activating the environment. Added for the build only."""
    try:
        import ninja  # the PyPI package (a dependency): its binary's directory
    except ImportError:
        yield
        return
    previous = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join((ninja.BIN_DIR, previous))
    try:
        yield
    finally:
        os.environ["PATH"] = previous


def load_decoder_stack(kernel_dir: Path, source_dir: Path = SOURCE_DIR) -> ModuleType:
    """The compiled decoder_stack module (built into `kernel_dir` when not there yet).
    `source_dir`: another copy of these sources (bench/native_step_ab.py compares two builds
    in one process; each source's module has its own name)."""
    from torch.utils import cpp_extension

    name = f"ferrite_decoder_stack_{build_key(source_dir)}"
    build_dir = kernel_dir / name
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        with _ninja_on_path():
            return cpp_extension.load(
                name=name,
                sources=[str(source_dir / DECODER_STACK_SOURCE.name)],
                extra_cflags=list(COMPILE_FLAGS),
                build_directory=str(build_dir),
                verbose=False,
            )
    except Exception as error:  # noqa: BLE001 (compiler, ninja, linker: all mean "not here")
        raise NativeBuildError(f"{type(error).__name__}: {error}") from error
