"""What a benchmark records about the machine it ran on (CPU figures depend on the CPU)."""

from __future__ import annotations

import subprocess


def cpu_model() -> str:
    """lscpu's model name and flags, one line."""
    lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    return "; ".join(line.split(":", 1)[1].strip() for line in lines if line.startswith(("Model name", "Flags")))


def ferrite_build() -> str:
    """`ferrite-launcher --version`: an unoptimized (debug) build's router costs ~5x the CPU
    time per token of a release build, so server figures must say which ran."""
    try:
        result = subprocess.run(["ferrite-launcher", "--version"], capture_output=True, text=True)
    except OSError:
        return "ferrite-launcher not found"
    return result.stdout.strip() or result.stderr.strip()


def server_machine() -> str:
    """What a benchmark through the launcher prints first: the CPU and the ferrite build."""
    return f"cpu: {cpu_model()}\n{ferrite_build()}"
