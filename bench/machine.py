"""What a benchmark records about the machine it ran on (CPU figures depend on the CPU)."""

from __future__ import annotations

import subprocess


def cpu_model() -> str:
    """lscpu's model name and flags, one line."""
    lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    return "; ".join(line.split(":", 1)[1].strip() for line in lines if line.startswith(("Model name", "Flags")))
